"""Sample images during a run: the model put in eval mode, its offloaded parts borrowed back
to the GPU, each image saved into the run folder, recorded and announced."""

from __future__ import annotations

from contextlib import ExitStack

import torch

from core.config.schema import TrainConfig
from core.training import placement
from core.training.active_run_folder import ActiveRunFolder
from core.training.events import SampleImage
from core.training.run_calls import RunCalls
from core.training.setup import Network


class Sampler:
    def __init__(self, config: TrainConfig, network: Network, device: torch.device, weight_dtype: torch.dtype,
                 is_main: bool, folder: ActiveRunFolder, calls: RunCalls) -> None:
        self.config = config
        self.network = network
        self.device = device
        self.weight_dtype = weight_dtype
        self.is_main = is_main  # only the main process samples
        self.folder = folder
        self.calls = calls

    def sample(self, step: int, epoch: int) -> None:
        if not self.is_main or not self.config.sampling.prompts.strip():
            return
        from core.config.prompts import parse_prompts
        from core.training.sampling import save_sample

        self.calls.ensure_run_dir()
        assert self.folder.path is not None
        components = self.network.components
        prompts = parse_prompts(self.config.sampling.prompts, self.config.sampling)
        was_training = {m: m.training for m in components.denoisers().values()}
        for module in was_training:
            module.eval()
        # An offloaded VAE or text encoder comes back to the GPU for the samples only.
        borrowed = ExitStack()
        borrowed.enter_context(placement.on_device(components.vae, self.device))
        for text_encoder in components.text_encoders.values():
            borrowed.enter_context(placement.on_device(text_encoder, self.device))
        try:
            for index, prompt in enumerate(prompts):
                self.calls.status(f"sampling {index + 1}/{len(prompts)}…", "sampling")
                image = self.network.family.generate(components, prompt, clip_skip=self.config.model.clip_skip,
                                                     device=self.device, dtype=self.weight_dtype,
                                                     max_token_length=self.config.training.max_token_length)
                name = f"{self.config.output.output_name}_s{step:06d}_e{epoch:04d}_{index:02d}.png"
                path = save_sample(image, self.folder.path / "samples", name, prompt, step, epoch)
                self.calls.record({"type": "sample", "path": str(path), "step": step, "epoch": epoch,
                                   "index": index, "prompt": prompt.prompt})
                self.calls.emit(SampleImage(str(path), prompt.prompt, step, epoch, index))
        finally:
            borrowed.close()
            for module, mode in was_training.items():
                module.train(mode)
        self.calls.status("training", "training")
