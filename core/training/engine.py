"""The engine: ``Trainer(config, sink, control).run()`` trains one LoRA and reports it all.

It plans the dataset (the same plan the GUI shows), loads the model, attaches LoRA, caches
latents, trains by the plan's step count, saves checkpoints and state, samples, and emits
typed events. It polls ``control`` between steps and inside long phases. Every failure
ends as a ``Failed`` event with advice; nothing is raised to the caller but interrupts.

The run's parts each live in their own object: the run folder and its log
(:mod:`active_run_folder`), metrics.jsonl and TensorBoard (:mod:`run_metrics`), checkpoints
and state (:mod:`checkpointer`), samples (:mod:`sampler`), summary.json (:mod:`run_summary`),
and where the run stands (:mod:`progress`). This module is the outline that drives them.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from core.config.schema import LatentCache as CacheMode, TrainConfig
from core.data.dataset_plan import DatasetPlan
from core.data.plan import plan_dataset, plan_to_json
from core.training import placement, resume, run_forecast, setup
from core.training.active_run_folder import ActiveRunFolder, RunFolderLost
from core.training.checkpoint import TrainingState, restore_rng, tidy_for_resume
from core.training.checkpointer import Checkpointer
from core.training.control import Cancelled, Control
from core.training.errors import ConfigProblems, diagnose, format_traceback
from core.training.events import (EpochMetrics, Failed, Finished, PhaseProgress, RunStarted, Sink, Status,
                                  StepMetrics, StepSkipped, ValidationMetrics)
from core.training.faults import NonFiniteGuard, release_memory
from core.training.memory import PhasePeaks
from core.training.metrics import EpochWindowAverage, Throughput, eta_seconds
from core.training.optim import current_lrs
from core.training.progress import Progress
from core.training.run_calls import RunCalls
from core.training.run_folder import LOG, PLAN, create_run_dir, write_config, write_json
from core.training.run_metrics import RunMetrics
from core.training.run_summary import SummaryKeeper
from core.training.sampler import Sampler
from core.training.validation import errors, validate

__all__ = ["RunFolderLost", "Trainer"]

log = logging.getLogger("lorakiln.run")


def _is_cancel(error: BaseException) -> bool:
    return isinstance(error, Cancelled) or type(error).__name__ in ("ModelLoadCancelled", "ScanCancelled",
                                                                   "CacheCancelled")


class Trainer:
    def __init__(self, config: TrainConfig, sink: Sink, control: Control | None = None, *,
                 description: str = "", resume_from: Path | None = None, base_dir: Path | None = None) -> None:
        self.config = config
        self.sink = sink
        self.control = control or Control()
        self.description = description
        self.resume_from = Path(resume_from) if resume_from else None
        self.base_dir = base_dir
        self._started = 0.0  # time.time() when run() began
        self._session_id = uuid.uuid4().hex
        # The run's parts; those that need the model are made when it is loaded.
        self.folder = ActiveRunFolder()
        self.metrics = RunMetrics(before_write=self._ensure_run_dir)
        self.run_summary = SummaryKeeper()
        self.progress = Progress()
        self.checkpoints: Checkpointer | None = None
        self.sampler: Sampler | None = None
        self._memory: PhasePeaks | None = None  # created per run: resets the device's peak
        # What _prepare builds, and _cleanup lets go of.
        self.plan: DatasetPlan | None = None
        self.accelerator: Any = None
        self.device: torch.device | None = None
        self.weight_dtype: torch.dtype | None = None
        self.network: setup.Network | None = None
        self.optimizer: Any = None
        self.lr_scheduler: Any = None
        self.trained_models: list[torch.nn.Module] | None = None
        self.generator: torch.Generator | None = None
        self.dataset: Any = None  # core.data.pipeline.BucketBatchDataset
        self.computer: Any = None  # core.training.step.StepComputer
        self.guard: NonFiniteGuard | None = None
        self._loader: Any = None  # core.data.pipeline.EpochLoader, while training
        self.validation: Any = None  # core.training.validation_loss.ValidationLoss, with held-out images
        self._validated_step = -1

    # ------------------------------------------------------------------ outline
    def run(self) -> Finished | Failed:
        self._started = time.time()
        try:
            self._prepare()
            reason = self._train()
            return self._finish(reason)
        except (KeyboardInterrupt, SystemExit):
            raise
        except resume.AlreadyComplete as done:
            return self._already_complete(done)
        except BaseException as error:  # noqa: BLE001 - every failure is reported to the person
            if _is_cancel(error):
                return self._finish("cancelled")
            return self._fail(error)
        finally:
            self._cleanup()

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def run_dir(self) -> Path | None:
        return self.folder.path

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def epoch(self) -> int:
        return self.progress.epoch

    def _emit(self, event) -> None:  # noqa: ANN001
        if self.is_main:
            self.sink.emit(event)

    def _status(self, text: str, phase: str = "training") -> None:
        log.info(text)
        if self._memory is not None:
            self._memory.enter(phase)
        self._emit(Status(text, phase))

    def _calls(self) -> RunCalls:
        return RunCalls(status=self._status, ensure_run_dir=self._ensure_run_dir, record=self.metrics.record,
                        emit=self._emit)

    # ------------------------------------------------------------------ preparing
    def _prepare(self) -> None:
        config, control = self.config, self.control
        self.folder.log.buffer()
        problems = errors(validate(config))
        if problems:
            raise ConfigProblems(problems)
        precision, note = setup.choose_precision(config, torch.cuda.is_available())
        self.accelerator = setup.make_accelerator(precision, setup.leaves_lora_unused(config))
        self.device = self.accelerator.device
        self._memory = PhasePeaks(self.device)
        self._max_norm: dict[str, float] = {}  # scale_weight_norms' figures of the last step
        self.weight_dtype = setup.weight_dtype(precision, self.device)
        from accelerate.utils import set_seed

        set_seed(config.training.seed)
        self._status("planning the dataset…", "loading")
        self.plan = plan_dataset(config.dataset, config.training, base_dir=self.base_dir,
                                 num_processes=self.accelerator.num_processes, cancelled=control.should_end)
        if self.plan.steps is None:
            from core.data.scan import DatasetError, unusable_dataset_message

            raise DatasetError(unusable_dataset_message(self.plan.skipped, self.plan.scan_warnings))
        total = self.plan.steps.max_train_steps
        problems = errors(validate(config, total_steps=total))
        if problems:
            raise ConfigProblems(problems)
        if self.is_main and run_forecast.wanted(self.device):  # before the model loads: seconds, no GPU memory
            self._status("forecasting the VRAM this run needs…", "loading")
            self.run_summary.vram_forecast = run_forecast.forecast_run(config, self.plan, precision)
        # A resume writes nothing to its folder until the saved state has been read, checked
        # against the plan and loaded into the model: a refused resume leaves the run as it was.
        resumed = None
        if self.resume_from is not None:
            resumed = resume.read_resume_state(self.resume_from)
            resume.check_not_complete(self.resume_from, resumed, total, config.output.output_name)
        if self.is_main:  # the run folder, created for a new run, and locked against any other process
            self.folder.claim(self.resume_from or create_run_dir(config))
        if resumed is None:
            self._open_run_dir(note)
        control.raise_if_cancelled()
        # On one GPU the U-Net waits on the CPU until latents and captions are cached, so the
        # VAE and text encoders have the card to themselves (an SDXL U-Net is 5 GB in bf16).
        # Several processes keep the usual order: DDP wraps a model on its device.
        # Text encoders whose outputs will be cached wait there too, while the VAE caches latents.
        defer_unet = self.device.type == "cuda" and self.accelerator.num_processes == 1
        self.network = setup.load_network(config, self.device, self.weight_dtype, control.should_end,
                                          lambda text: self._status(text, "loading"),
                                          unet_device=placement.CPU if defer_unet else None,
                                          encoders_wait=defer_unet and placement.can_cache_text_states(
                                              config, [s.params for s in self.plan.subsets]))
        self.optimizer, self.lr_scheduler = setup.make_optimizer_and_schedule(config, self.network, total)
        placements = [not (defer_unet and name == "unet") for name in self.network.trained]
        prepared = self.accelerator.prepare(*self.network.trained.values(), self.optimizer,
                                            device_placement=placements + [True])
        self.optimizer = prepared[-1]
        self.trained_models = list(prepared[:-1])
        self.generator = torch.Generator().manual_seed(config.training.seed)
        if resumed is not None:
            changed = resume.changed_settings(self.resume_from, config) if self.is_main else []
            resume.apply_state(resumed, self.network.trained, self.optimizer, self.lr_scheduler, self.generator,
                               changed, self.resume_from, self.accelerator.scaler)
            self._open_run_dir(note)
        self._prepare_data()
        if resumed is not None:
            self._take_resumed(resumed)
        self.guard = NonFiniteGuard(config.training, self.progress.skipped_before)
        calls = self._calls()
        self.checkpoints = Checkpointer(config, self.plan, self.network, self.optimizer, self.lr_scheduler,
                                        self.generator, self.accelerator, self._memory, self.guard, self.progress,
                                        self.folder, calls, session_id=self._session_id, started_at=self._started)
        self.sampler = Sampler(config, self.network, self.device, self.weight_dtype, self.is_main, self.folder, calls)
        from core.training.step import StepComputer

        self.computer = StepComputer(config, self.network.family, self.network.components, self.device, self.generator,
                                     self.accelerator.autocast, dict(zip(self.network.trained, self.trained_models)))
        from core.training.validation_loss import for_run
        self.validation = for_run(config, self.plan, self.computer)
        self._cache_text_states()
        if defer_unet:
            setup.place_unet(self.network, self.device, self.optimizer)

    def _cache_text_states(self) -> None:
        """Each distinct caption encoded once, and the text encoder off the GPU, when it is not
        trained and no caption changes between epochs (sd-scripts' cache_text_encoder_outputs)."""
        from core.data.caption_augment import process_caption
        from core.data.pipeline import batch_rng
        if not placement.can_cache_text_states(self.config, [s.params for s in self.plan.subsets]):
            return
        self._status("encoding captions…", "caching")
        # No option that draws is on, so these are the captions every epoch trains with.
        captions = [process_caption(s.record.caption, s.options, batch_rng(0, 0, 0)) for s in self.dataset.samples]
        captions += self.validation.captions if self.validation is not None else []
        cache = setup.make_text_cache(self.config, self.network.family.name, self.accelerator.mixed_precision)
        for text_encoder in self.network.components.text_encoders.values():
            text_encoder.to(self.device)  # from the CPU where it waited (setup.prepare_network)
        with self.accelerator.autocast():
            count = cache.fill(captions, self.computer.text, cancelled=self.control.should_end)
        self.computer.text_cache = cache
        for text_encoder in self.network.components.text_encoders.values():
            placement.offload(text_encoder)
        stored = f", {cache.from_disk} read from the disk cache" if cache.from_disk else ""
        self._status(f"text-encoder outputs cached for {count + cache.from_disk} distinct captions{stored}",
                     "caching")

    def _open_run_dir(self, note: str | None) -> None:
        config = self.config
        if self.is_main:
            run_dir = self.folder.open()
            if self.resume_from is None:
                write_config(run_dir, config, self.description)
            else:  # a killed run left temporary files, and metrics of steps it trains again now
                for line in tidy_for_resume(run_dir):
                    log.info(line)
            self._write_run_files(with_config=False)
            steps = self.plan.steps
            self.run_summary.start(run_dir, config, steps, self._started, self._memory)
            log.info("run folder %s; %d steps, %d epochs, %d batches per epoch", run_dir,
                     steps.max_train_steps, steps.epochs, steps.batches_per_epoch)
        if note:
            self._status(note, "loading")
        steps = self.plan.steps
        self._emit(RunStarted(str(self.run_dir), config.output.output_name, steps.max_train_steps, steps.epochs,
                              steps.batches_per_epoch, steps.steps_per_epoch, 0))

    def _write_run_files(self, with_config: bool) -> None:
        """plan.json, the metrics and TensorBoard writers (and config.toml when asked)."""
        if with_config:
            write_config(self.run_dir, self.config, self.description)
        write_json(self.run_dir / PLAN, plan_to_json(self.plan))
        self.metrics.open(self.run_dir, self.config.logging.tensorboard)

    def _prepare_data(self) -> None:
        from core.data.pipeline import BucketBatchDataset
        from core.data.samples import samples

        config = self.config
        cache = setup.make_latent_cache(config)
        if cache is not None:
            self._status("caching latents…", "caching")
            items = samples(self.plan, config.dataset.prior_loss_weight)
            encode = setup.vae_encoder(self.network.components, self.device, config.training.seed)
            flips = any(s.options.flip_aug for s in items)
            channels = self.network.components.vae.config.latent_channels
            encoded = cache.fill(items, encode, batch_size=config.dataset.vae_batch_size, flip_aug_keys=flips,
                                 latent_channels=channels, cancelled=self.control.should_end,
                                 progress=lambda done, total: self._emit(PhaseProgress("caching", done, total)))
            bad = cache.bad_entries
            redone = f", {bad} of them replacing damaged or mismatched cache files" if bad else ""
            self._status(f"latents ready ({encoded} newly encoded{redone})" if encoded
                         else "latents ready (all from the cache)", "caching")
            placement.offload(self.network.components.vae)  # until sampling borrows it back
        self.dataset = BucketBatchDataset(self.plan, batch_size=config.training.batch_size,
                                          seed=config.training.seed,
                                          prior_loss_weight=config.dataset.prior_loss_weight, latent_cache=cache,
                                          masked_loss=config.dataset.masked_loss)

    def _take_resumed(self, state: TrainingState) -> None:
        """Where the saved state left off; its RNGs are restored last, after latent caching."""
        restore_rng(state)
        self.progress.take_resumed(state)
        self._memory.take_earlier(state.peak_by_phase, state.memory_kind, state.peak_memory_mb)
        self._status(f"resumed at step {state.step} (epoch {state.epoch})", "loading")

    # ------------------------------------------------------------------ training
    def _train(self) -> str:
        from core.data.pipeline import EpochLoader, loader_workers
        from core.training.step import train_micro_batch

        config, control, plan, progress = self.config, self.control, self.plan, self.progress
        steps = plan.steps
        total = steps.max_train_steps
        window = EpochWindowAverage(steps.steps_per_epoch)
        accum = config.training.gradient_accumulation_steps
        epoch_losses: list[float] = []
        resumed = progress.resumed
        if resumed is not None:
            for value in resumed.loss_window:
                window.add(value)
            epoch_losses = list(resumed.epoch_losses)
        throughput = Throughput()
        throughput.mark()
        progress.train_started = time.perf_counter()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        if progress.step == 0 and config.sampling.at_step_0:
            with throughput.excluded():  # the time per step is training's own: samples are timed apart
                self.sampler.sample(0, 0)
        self._status("training")
        workers = loader_workers(config.dataset.max_data_loader_n_workers,
                                 config.dataset.latent_cache is CacheMode.MEMORY, os.cpu_count())
        self._loader = loaders = EpochLoader(self.dataset, workers, pin_memory=self.device.type == "cuda")
        for epoch in range(progress.start_epoch, steps.epochs + 1):
            progress.epoch = epoch
            self.dataset.set_epoch(epoch)
            order = setup.shard(list(range(len(self.dataset))), rank, world)
            skip = progress.skip_batches if epoch == progress.start_epoch else 0
            progress.batch_in_epoch = skip
            loader = loaders.epoch(epoch, order[skip:])
            last_batch = len(order) - skip  # the epoch's last micro-batch closes a short window
            micro_losses: list[float] = []
            for number, batch in enumerate(loader, start=1):
                if control.paused:
                    self._hold(throughput, between_steps=not micro_losses)
                if control.cancel_requested:
                    return "cancelled"
                if control.stop_requested:
                    progress.epoch_losses, progress.window = epoch_losses, window
                    return "stopped"
                sync = len(micro_losses) + 1 == accum or number == last_batch
                value = train_micro_batch(self.accelerator, self.computer, self.optimizer, self.trained_models,
                                          self.guard, batch, progress.step + 1, config.training.max_grad_norm,
                                          accum, sync)
                micro_losses.append(value)
                progress.batch_in_epoch += 1
                if not sync:
                    continue
                if config.network.scale_weight_norms:
                    from core.training.max_norm import apply_max_norm
                    self._max_norm = apply_max_norm(self.network.handles, config.network.scale_weight_norms)
                self.lr_scheduler.step()  # a skipped step still counts: the schedule follows the plan
                progress.step += 1
                throughput.mark()
                bad_loss = self.guard.end_step()
                if bad_loss is not None:
                    self._report_skip(bad_loss)
                else:
                    step_loss = sum(micro_losses) / len(micro_losses)
                    epoch_losses.append(step_loss)
                    average = window.add(step_loss)
                    progress.epoch_losses, progress.window = epoch_losses, window
                    self._report_step(step_loss, average, throughput, len(batch.keys) * world)
                micro_losses = []
                with throughput.excluded():
                    self._after_step()
                if progress.step >= total:
                    break
            # An epoch cut short by max_train_steps is no epoch: no epoch loss, no "epoch done".
            cut_short = progress.batch_in_epoch < len(order)
            if cut_short:
                self._status(f"max steps ({total}) reached partway through epoch {epoch}: no epoch loss for it")
                if epoch_losses:
                    self.metrics.partial_epoch(epoch, sum(epoch_losses) / len(epoch_losses))
            elif epoch_losses:
                mean = sum(epoch_losses) / len(epoch_losses)
                self._emit(EpochMetrics(epoch, progress.step, mean))
                self.metrics.epoch(epoch, progress.step, mean)
                progress.last_epoch_mean = mean
            epoch_losses = []
            with throughput.excluded():
                self._after_epoch(epoch, finished=progress.step >= total)
            if progress.step >= total:
                break
        return "completed"

    def _hold(self, throughput: Throughput, between_steps: bool) -> None:
        throughput.pause()
        self._status("paused", "paused")
        while not self.control.wait_while_paused(0.2):
            if between_steps:  # mid gradient accumulation they wait for the step's end
                self._serve_while_paused()
        throughput.resume()
        self._status("training")

    def _serve_while_paused(self) -> None:
        """Save now and Sample now asked for during a pause, done at once: the pause holds
        the run between two steps, where they are done anyway."""
        if self.control.take_save_request():
            self._ensure_run_dir()
            self.checkpoints.save_checkpoint("manual", with_state=True)
            self._status("paused", "paused")
        if self.control.take_sample_request():
            self.sampler.sample(self.step, self.epoch)
            self._status("paused", "paused")

    def _report_step(self, loss: float, average: float, throughput: Throughput, images: int) -> None:
        lrs, dlrs = current_lrs(self.optimizer)
        memory = self._memory.figures()
        rate = throughput.steps_per_second
        total = self.plan.steps.max_train_steps
        metrics = StepMetrics(step=self.step, epoch=self.epoch, total_steps=total, loss=loss, avg_loss=average,
                              lr=lrs, dlr=dlrs, memory_allocated_mb=memory["allocated"],
                              memory_reserved_mb=memory["reserved"], memory_peak_mb=memory["peak"],
                              memory_kind=memory["kind"], memory_peak_reserved_mb=memory["peak_reserved"],
                              memory_run_peak_mb=memory["run_peak"], it_per_s=rate,
                              images_per_s=rate * images * self.config.training.gradient_accumulation_steps,
                              eta_s=eta_seconds(self.step, total, rate),
                              elapsed_s=self.progress.wall_seconds(), max_norm=dict(self._max_norm))
        self._emit(metrics)
        self.metrics.step(metrics)

    def _report_skip(self, loss: float) -> None:
        guard = self.guard
        text = (f"step {self.step}: the loss was {loss}; step skipped, weights unchanged "
                f"({guard.in_a_row} in a row, {guard.skipped} in this run)")
        log.warning(text)
        self._emit(StepSkipped(self.step, self.epoch, loss, guard.in_a_row, guard.skipped))
        self._emit(Status(text, "training"))
        self.metrics.record({"type": "skipped", "step": self.step, "epoch": self.epoch, "loss": loss,
                             "in_a_row": guard.in_a_row})

    def _after_step(self) -> None:
        output, sampling = self.config.output, self.config.sampling
        self._ensure_run_dir()
        if self.control.take_save_request():
            self.checkpoints.save_checkpoint("manual", with_state=True)
        elif output.save_every_n_steps and self.step % output.save_every_n_steps == 0 \
                and self.step < self.plan.steps.max_train_steps:
            self.checkpoints.save_checkpoint("step", with_state=output.save_state)
        if self.control.take_sample_request() or (sampling.every_n_steps and self.step % sampling.every_n_steps == 0):
            self.sampler.sample(self.step, self.epoch)
        every = self.config.training.validate_every_n_steps
        if self.validation is not None and every and self.step % every == 0:
            self._validate("step")

    def _after_epoch(self, epoch: int, finished: bool) -> None:
        output, sampling = self.config.output, self.config.sampling
        if output.save_every_n_epochs and epoch % output.save_every_n_epochs == 0 and not finished:
            self.checkpoints.save_checkpoint("epoch", with_state=output.save_state)
        if sampling.every_n_epochs and (epoch % sampling.every_n_epochs == 0 or finished):
            self.sampler.sample(self.step, epoch)
        every = self.config.training.validate_every_n_epochs
        if self.validation is not None and every and (epoch % every == 0 or finished):
            self._validate("epoch")

    def _validate(self, when: str) -> None:
        """The validation loss, once per step at most, to the sink, metrics and summary."""
        if self._validated_step == self.step:
            return
        self._validated_step = self.step
        loss = self.validation.evaluate(self.trained_models)
        best = self.progress.validated(loss, self.step)
        self.run_summary.validation(loss, self.progress)
        event = ValidationMetrics(self.step, self.epoch, loss, best, self.validation.image_count, when)
        log.info("step %d: validation loss %.6f (best %.6f)", self.step, loss, best)
        self._emit(event)
        if self.is_main:
            self.metrics.validation(event)

    def _ensure_run_dir(self) -> None:
        """A run folder deleted while training (by hand, a sync tool, a cleaner) is created
        again, so the work still in memory is saved; what was in it is gone, and the log says
        so. When it cannot be created again, the run stops saying exactly that."""
        if not self.is_main or not self.folder.is_lost():
            return
        lost = self.run_dir
        self.folder.make_again(self.step)
        self.metrics.close()
        self._write_run_files(with_config=True)
        if self.progress.last_checkpoint and not Path(self.progress.last_checkpoint).exists():
            self.progress.last_checkpoint = None
        self.run_summary.write_again(lost)
        text = (f"the run folder {lost} was deleted during training (at step {self.step}); it was created "
                "again and training goes on. The log, metrics, checkpoints and samples from before were lost "
                "with it; the final LoRA will be saved there.")
        log.warning(text)
        self._emit(Status(text, "training"))

    # ------------------------------------------------------------------ ending
    def _finish(self, reason: str) -> Finished:
        lora_path = None
        if reason in ("completed", "stopped") and self.checkpoints is not None:
            lora_path = self.checkpoints.save_final(reason)
        wall = self.progress.wall_seconds()
        if self.run_dir is not None:
            self.run_summary.complete(self.run_dir, reason, self.progress, self._memory, lora_path, wall,
                                      self._skipped_steps)
        event = Finished(reason, str(self.run_dir) if self.run_dir else "", lora_path, self.step, self.epoch, wall,
                         self._skipped_steps)
        log.info("finished: %s after %d steps", reason, self.step)
        self._emit(event)
        return event

    @property
    def _skipped_steps(self) -> int:
        guard = self.guard
        return guard.skipped if guard is not None else self.progress.skipped_before

    def _fail(self, error: BaseException) -> Failed:
        diagnosis = diagnose(error, self.config)
        trace = format_traceback(error)
        log.error("%s\n%s", diagnosis.summary, trace)
        if self.run_dir is not None:
            self.run_summary.complete(self.run_dir, "failed", self.progress, self._memory, None,
                                      self.progress.wall_seconds(), self._skipped_steps, diagnosis.summary)
        # Only files that exist: a run folder deleted under the run took its log with it.
        log_path = str(self.run_dir / LOG) if self.run_dir and (self.run_dir / LOG).is_file() else None
        last = self.progress.last_checkpoint
        checkpoint = last if last and Path(last).is_file() else None
        event = Failed(diagnosis.kind, diagnosis.summary, diagnosis.advice, trace, log_path,
                       str(self.run_dir) if self.run_dir else None, checkpoint)
        self._emit(event)
        return event

    def _already_complete(self, done: resume.AlreadyComplete) -> Finished:
        """Nothing to train: say so, and change nothing in the run folder."""
        log.info("%s", done)
        self._status(str(done), "loading")
        state = done.state
        event = Finished("already_complete", str(done.run_dir), str(done.lora_path) if done.lora_path else None,
                         state.step, state.epoch, state.wall_seconds, state.skipped_steps)
        self._emit(event)
        return event

    def _cleanup(self) -> None:
        self.metrics.close()
        self.folder.release()
        # Release the model and optimizer now (an out-of-memory run must leave the GPU usable
        # for the next run in the same process) and reset accelerate's process-wide state.
        loader, self._loader = self._loader, None
        if loader is not None:
            loader.close()
        self.network = self.optimizer = self.lr_scheduler = self.trained_models = self.computer = None
        self.dataset = self.guard = self.checkpoints = self.sampler = self.validation = None
        distributed = self.accelerator is not None and self.accelerator.num_processes > 1
        # Not accelerator.free_memory(): it runs gc.collect() unconditionally, and in the GUI
        # collection belongs to the GUI thread. Dropping the accelerator drops its references.
        self.accelerator = None
        release_memory()
        setup.reset_accelerate_state(distributed)
        os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
