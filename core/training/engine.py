"""The engine: ``Trainer(config, sink, control).run()`` trains one LoRA and reports it all.

It plans the dataset (the same plan the GUI shows), loads the model, attaches LoRA, caches
latents, trains by the plan's step count, saves checkpoints and state, samples, and emits
typed events. It polls ``control`` between steps and inside long phases. Every failure
ends as a ``Failed`` event with advice; nothing is raised to the caller but interrupts.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import torch

from core.config.schema import LatentCache as CacheMode, TrainConfig
from core.data.dataset_plan import DatasetPlan
from core.data.plan import plan_dataset, plan_to_json
from core.system.processes import this_process
from core.training.run_folder import (LOG, METRICS, PLAN, MetricsWriter, RunSummary, create_run_dir, write_config, write_json)
from core.training import placement, resume, setup
from core.training.checkpoint import (CHECKPOINT_DIR, SAVE_DTYPES, STATE_DIR, TrainingState, capture_rng,
                                      checkpoint_name, prune_checkpoints, restore_rng, save_state, tidy_for_resume,
                                      trainable_state)
from core.training.control import Cancelled, Control
from core.training.errors import ConfigProblems, diagnose, format_traceback
from core.training.events import (CheckpointSaved, EpochMetrics, Failed, Finished, PhaseProgress, RunStarted,
                                  SampleImage, Sink, Status, StepMetrics, StepSkipped)
from core.training.faults import NonFiniteGuard, release_memory
from core.training.memory import PhasePeaks
from core.training.metrics import EpochWindowAverage, Throughput, eta_seconds
from core.training.optim import current_lrs
from core.training.run_lock import RunFolderLock
from core.training.tensorboard import lr_tag
from core.training.validation import errors, validate

log = logging.getLogger("lorakiln.run")


class RunFolderLost(OSError):
    """The run folder was deleted during training and could not be created again."""


class _BufferHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 10_000:
            self.records.append(record)


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
        self.run_dir: Path | None = None
        self.summary: RunSummary | None = None
        self.plan: DatasetPlan | None = None
        self.accelerator = None
        self.network = None
        self.step = 0
        self.epoch = 1
        self.last_checkpoint: str | None = None
        self.guard: NonFiniteGuard | None = None
        self._metrics: MetricsWriter | None = None
        self._tensorboard = None
        self._log_handler: logging.Handler | None = None
        self._memory: PhasePeaks | None = None  # created per run: resets the device's peak
        self._wall_before = 0.0  # training time of earlier sessions of a resumed run
        self._session_id = uuid.uuid4().hex

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

    def _emit(self, event) -> None:  # noqa: ANN001
        if self.is_main:
            self.sink.emit(event)

    def _status(self, text: str, phase: str = "training") -> None:
        log.info(text)
        if self._memory is not None:
            self._memory.enter(phase)
        self._emit(Status(text, phase))

    # ------------------------------------------------------------------ preparing
    def _prepare(self) -> None:
        config, control = self.config, self.control
        self._buffer_log()
        problems = errors(validate(config))
        if problems:
            raise ConfigProblems(problems)
        precision, note = setup.choose_precision(config, torch.cuda.is_available())
        self.accelerator = setup.make_accelerator(precision, setup.leaves_lora_unused(config))
        self.device = self.accelerator.device
        self._memory = PhasePeaks(self.device)
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
        # A resume writes nothing to its folder until the saved state has been read, checked
        # against the plan and loaded into the model: a refused resume leaves the run as it was.
        resumed = None
        if self.resume_from is not None:
            resumed = resume.read_resume_state(self.resume_from)
            resume.check_not_complete(self.resume_from, resumed, total, config.output.output_name)
        self._claim_run_dir()
        if resumed is None:
            self._open_run_dir(note)
        control.raise_if_cancelled()
        self.network = setup.load_network(config, self.device, self.weight_dtype, control.should_end,
                                          lambda text: self._status(text, "loading"))
        self.optimizer, self.lr_scheduler = setup.make_optimizer_and_schedule(config, self.network, total)
        prepared = self.accelerator.prepare(*self.network.trained.values(), self.optimizer)
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
        from core.training.step import StepComputer

        self.computer = StepComputer(config, self.network.family, self.network.components, self.device, self.generator,
                                     self.accelerator.autocast, dict(zip(self.network.trained, self.trained_models)))
        self._cache_text_states()

    def _cache_text_states(self) -> None:
        """Each distinct caption encoded once, and the text encoder off the GPU, when it is not
        trained and no caption changes between epochs (sd-scripts' cache_text_encoder_outputs)."""
        from core.data.caption_augment import process_caption
        from core.data.pipeline import batch_rng
        from core.training.text_cache import TextStateCache

        if not placement.can_cache_text_states(self.config, [s.params for s in self.plan.subsets]):
            return
        self._status("encoding captions…", "caching")
        # No option that draws is on, so these are the captions every epoch trains with.
        captions = [process_caption(s.record.caption, s.options, batch_rng(0, 0, 0)) for s in self.dataset.samples]
        cache = TextStateCache()
        with self.accelerator.autocast():
            count = cache.fill(captions, self.computer.text, cancelled=self.control.should_end)
        self.computer.text_cache = cache
        for text_encoder in self.network.components.text_encoders.values():
            placement.offload(text_encoder)
        self._status(f"text-encoder outputs cached for {count} distinct captions", "caching")

    def _claim_run_dir(self) -> None:
        """The run folder, created for a new run, and locked against any other process."""
        if not self.is_main:
            return
        folder = self.resume_from or create_run_dir(self.config)
        self._lock = RunFolderLock(folder).acquire()
        if self._lock.previous is not None:
            log.info("took over the run folder from process %s, which is no longer running",
                     self._lock.previous.get("pid"))
        self._claimed = folder

    def _buffer_log(self) -> None:
        """Keep the log lines of the time before the run folder is written, for its log.txt."""
        self._early_log = _BufferHandler()
        logging.getLogger("lorakiln").addHandler(self._early_log)
        logging.getLogger("lorakiln").setLevel(logging.INFO)

    def _open_run_dir(self, note: str | None) -> None:
        config = self.config
        if self.is_main:
            self.run_dir = self._claimed
            self._open_log()
            if self.resume_from is None:
                write_config(self.run_dir, config, self.description)
            else:  # a killed run left temporary files, and metrics of steps it trains again now
                for line in tidy_for_resume(self.run_dir):
                    log.info(line)
            self._write_run_files(with_config=False)
            steps = self.plan.steps
            self.summary = RunSummary(status="running", name=config.output.output_name,
                                      total_steps=steps.max_train_steps, total_epochs=steps.epochs,
                                      started_at=self._started,
                                      memory_kind=self._memory.kind, memory_method=self._memory.method,
                                      runner=this_process())
            self.summary.write(self.run_dir)
            log.info("run folder %s; %d steps, %d epochs, %d batches per epoch", self.run_dir,
                     steps.max_train_steps, steps.epochs, steps.batches_per_epoch)
        if note:
            self._status(note, "loading")
        steps = self.plan.steps
        self._emit(RunStarted(str(self.run_dir), config.output.output_name, steps.max_train_steps, steps.epochs,
                              steps.batches_per_epoch, steps.steps_per_epoch, 0))

    def _open_log(self) -> None:
        handler = logging.FileHandler(self.run_dir / LOG, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        early, self._early_log = getattr(self, "_early_log", None), None
        if early is not None:
            logging.getLogger("lorakiln").removeHandler(early)
            for record in early.records:
                handler.handle(record)
        logging.getLogger("lorakiln").addHandler(handler)
        logging.getLogger("lorakiln").setLevel(logging.INFO)
        self._log_handler = handler

    def _write_run_files(self, with_config: bool) -> None:
        """plan.json, the metrics and TensorBoard writers (and config.toml when asked)."""
        if with_config:
            write_config(self.run_dir, self.config, self.description)
        write_json(self.run_dir / PLAN, plan_to_json(self.plan))
        self._metrics = MetricsWriter(self.run_dir / METRICS)
        if self.config.logging.tensorboard:
            from core.training.tensorboard import EventWriter

            self._tensorboard = EventWriter(self.run_dir / "tensorboard")

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
            channels = getattr(getattr(self.network.components.vae, "config", None), "latent_channels", None)
            encoded = cache.fill(items, encode, batch_size=config.dataset.vae_batch_size, flip_aug_keys=flips,
                                 latent_channels=channels, cancelled=self.control.should_end,
                                 progress=lambda done, total: self._emit(PhaseProgress("caching", done, total)))
            bad = getattr(cache, "bad_entries", 0)
            redone = f", {bad} of them replacing damaged or mismatched cache files" if bad else ""
            self._status(f"latents ready ({encoded} newly encoded{redone})" if encoded
                         else "latents ready (all from the cache)", "caching")
            placement.offload(self.network.components.vae)  # until sampling borrows it back
        self.dataset = BucketBatchDataset(self.plan, batch_size=config.training.batch_size,
                                          seed=config.training.seed,
                                          prior_loss_weight=config.dataset.prior_loss_weight, latent_cache=cache)
        self._start_epoch, self._skip_batches = 1, 0

    def _take_resumed(self, state: TrainingState) -> None:
        """Where the saved state left off; its RNGs are restored last, after latent caching."""
        restore_rng(state)
        self.step, self._start_epoch, self._skip_batches = state.step, state.epoch, state.batch_in_epoch
        self._wall_before = state.wall_seconds
        self._memory.take_earlier(state.peak_by_phase, state.memory_kind, state.peak_memory_mb)
        self._skipped_before = state.skipped_steps
        self._resumed = state
        self._status(f"resumed at step {state.step} (epoch {state.epoch})", "loading")

    # ------------------------------------------------------------------ training
    def _train(self) -> str:
        from core.data.pipeline import EpochLoader, loader_workers
        from core.training.step import train_micro_batch

        config, control, plan = self.config, self.control, self.plan
        steps = plan.steps
        total = steps.max_train_steps
        window = EpochWindowAverage(steps.steps_per_epoch)
        accum = config.training.gradient_accumulation_steps
        epoch_losses: list[float] = []
        resumed = getattr(self, "_resumed", None)
        if resumed is not None:
            for value in resumed.loss_window:
                window.add(value)
            epoch_losses = list(resumed.epoch_losses)
        throughput = Throughput()
        throughput.mark()
        self.guard = NonFiniteGuard(config.training, getattr(self, "_skipped_before", 0))
        self._train_started = time.perf_counter()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        if self.step == 0 and config.sampling.at_step_0:
            self._sample(0, 0)
        self._status("training")
        workers = loader_workers(config.dataset.max_data_loader_n_workers,
                                 config.dataset.latent_cache is CacheMode.MEMORY, os.cpu_count())
        self._loader = loaders = EpochLoader(self.dataset, workers, pin_memory=self.device.type == "cuda")
        for epoch in range(self._start_epoch, steps.epochs + 1):
            self.epoch = epoch
            self.dataset.set_epoch(epoch)
            order = setup.shard(list(range(len(self.dataset))), rank, world)
            skip = self._skip_batches if epoch == self._start_epoch else 0
            self._batch_in_epoch = skip
            loader = loaders.epoch(epoch, order[skip:])
            last_batch = len(order) - skip  # the epoch's last micro-batch closes a short window
            micro_losses: list[float] = []
            for number, batch in enumerate(loader, start=1):
                if control.paused:
                    self._hold(throughput)
                if control.cancel_requested:
                    return "cancelled"
                if control.stop_requested:
                    self._epoch_losses, self._window = epoch_losses, window
                    return "stopped"
                sync = len(micro_losses) + 1 == accum or number == last_batch
                value = train_micro_batch(self.accelerator, self.computer, self.optimizer, self.trained_models,
                                          self.guard, batch, self.step + 1, config.training.max_grad_norm,
                                          accum, sync)
                micro_losses.append(value)
                self._batch_in_epoch += 1
                if not sync:
                    continue
                self.lr_scheduler.step()  # a skipped step still counts: the schedule follows the plan
                self.step += 1
                throughput.mark()
                bad_loss = self.guard.end_step()
                if bad_loss is not None:
                    self._report_skip(bad_loss)
                else:
                    step_loss = sum(micro_losses) / len(micro_losses)
                    epoch_losses.append(step_loss)
                    average = window.add(step_loss)
                    self._epoch_losses, self._window = epoch_losses, window
                    self._report_step(step_loss, average, throughput, len(batch.keys) * world)
                micro_losses = []
                self._after_step()
                if self.step >= total:
                    break
            if epoch_losses:
                mean = sum(epoch_losses) / len(epoch_losses)
                self._emit(EpochMetrics(epoch, self.step, mean))
                self._record({"type": "epoch", "epoch": epoch, "step": self.step, "mean_loss": mean})
                if self._tensorboard:
                    self._tensorboard.scalars({"loss/epoch_average": mean}, epoch)
                self._last_epoch_mean = mean
            epoch_losses = []
            self._after_epoch(epoch, finished=self.step >= total)
            if self.step >= total:
                break
        return "completed"

    def _hold(self, throughput: Throughput) -> None:
        throughput.pause()
        self._status("paused", "paused")
        while not self.control.wait_while_paused(0.2):
            pass
        throughput.resume()
        self._status("training")

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
                              elapsed_s=self._wall_before + time.perf_counter() - self._train_started)
        self._emit(metrics)
        record = {"type": "step", **{k: v for k, v in metrics.__dict__.items() if k != "total_steps"}}
        self._record(record)
        if self._tensorboard:
            values = {"loss/current": loss, "loss/average": average}
            values.update({lr_tag(name): value for name, value in lrs.items()})
            values.update({lr_tag(name, "lr/d*lr/"): value for name, value in dlrs.items()})
            self._tensorboard.scalars(values, self.step)

    def _report_skip(self, loss: float) -> None:
        guard = self.guard
        text = (f"step {self.step}: the loss was {loss}; step skipped, weights unchanged "
                f"({guard.in_a_row} in a row, {guard.skipped} in this run)")
        log.warning(text)
        self._emit(StepSkipped(self.step, self.epoch, loss, guard.in_a_row, guard.skipped))
        self._emit(Status(text, "training"))
        self._record({"type": "skipped", "step": self.step, "epoch": self.epoch, "loss": loss,
                      "in_a_row": guard.in_a_row})

    def _record(self, record: dict) -> None:
        self._ensure_run_dir()
        if self._metrics is not None:
            self._metrics.write(record)

    def _after_step(self) -> None:
        output, sampling = self.config.output, self.config.sampling
        self._ensure_run_dir()
        if self.control.take_save_request():
            self._save_checkpoint("manual", with_state=True)
        elif output.save_every_n_steps and self.step % output.save_every_n_steps == 0 \
                and self.step < self.plan.steps.max_train_steps:
            self._save_checkpoint("step", with_state=output.save_state)
        if self.control.take_sample_request() or (sampling.every_n_steps and self.step % sampling.every_n_steps == 0):
            self._sample(self.step, self.epoch)

    def _after_epoch(self, epoch: int, finished: bool) -> None:
        output, sampling = self.config.output, self.config.sampling
        if output.save_every_n_epochs and epoch % output.save_every_n_epochs == 0 and not finished:
            self._save_checkpoint("epoch", with_state=output.save_state)
        if sampling.every_n_epochs and (epoch % sampling.every_n_epochs == 0 or finished):
            self._sample(self.step, epoch)

    # ------------------------------------------------------------------ saving
    def _save_lora(self, path: Path, kind: str) -> str:
        from core.kohya.lora_format import to_kohya_state_dict
        from core.kohya.metadata import build_metadata, save_lora_file

        self._ensure_run_dir()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._status(f"saving {path.name}…", "saving")
        config = self.config
        tensors = to_kohya_state_dict(self.network.handles, self.network.family,
                                      SAVE_DTYPES[config.output.save_precision])
        metadata = build_metadata(config, self.plan, epoch=self.epoch, step=self.step, session_id=self._session_id,
                                  training_started_at=self._started, training_finished_at=None,
                                  model_name=self.network.components.source, title=config.output.output_name,
                                  num_processes=self.accelerator.num_processes, family=self.network.family)
        save_lora_file(path, tensors, metadata)
        self.last_checkpoint = str(path)
        log.info("saved %s (%s)", path, kind)
        self._status("training")
        return str(path)

    def _state(self) -> TrainingState:
        torch_rng, python_rng, cuda_rng = capture_rng()
        return TrainingState(
            step=self.step, epoch=self.epoch, batch_in_epoch=getattr(self, "_batch_in_epoch", 0),
            wall_seconds=self._wall_before + time.perf_counter() - getattr(self, "_train_started", time.perf_counter()),
            lora=trainable_state(self.network.trained), optimizer=self.optimizer.state_dict(),
            scheduler=self.lr_scheduler.state_dict(), generator=self.generator.get_state(), torch_rng=torch_rng,
            python_rng=python_rng, cuda_rng=cuda_rng, loss_window=list(getattr(self, "_window", EpochWindowAverage(1))._values),
            epoch_losses=list(getattr(self, "_epoch_losses", [])), peak_memory_mb=self._memory.overall()[0],
            skipped_steps=self._skipped_steps, peak_by_phase=self._memory.by_phase(), memory_kind=self._memory.kind,
            grad_scaler=self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None)

    def _save_checkpoint(self, kind: str, with_state: bool) -> None:
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        output = self.config.output
        folder = self.run_dir / CHECKPOINT_DIR
        folder.mkdir(exist_ok=True)
        name = checkpoint_name(output.output_name, epoch=self.epoch) if kind == "epoch" else \
            checkpoint_name(output.output_name, step=self.step)
        path = self._save_lora(folder / name, kind)
        state_path = str(save_state(self.run_dir / STATE_DIR, self._state())) if with_state else None
        prune_checkpoints(folder, output.output_name, output.keep_last_n)
        self._record({"type": "checkpoint", "path": path, "step": self.step, "epoch": self.epoch, "kind": kind})
        self._emit(CheckpointSaved(path, self.step, self.epoch, kind, state_path))

    def _sample(self, step: int, epoch: int) -> None:
        if not self.is_main or not self.config.sampling.prompts.strip():
            return
        from core.config.prompts import parse_prompts
        from core.training.sampling import save_sample

        self._ensure_run_dir()
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
                self._status(f"sampling {index + 1}/{len(prompts)}…", "sampling")
                image = self.network.family.generate(components, prompt, clip_skip=self.config.model.clip_skip,
                                                     device=self.device, dtype=self.weight_dtype,
                                                     max_token_length=self.config.training.max_token_length)
                name = f"{self.config.output.output_name}_s{step:06d}_e{epoch:04d}_{index:02d}.png"
                path = save_sample(image, self.run_dir / "samples", name, prompt, step, epoch)
                self._record({"type": "sample", "path": str(path), "step": step, "epoch": epoch,
                              "index": index, "prompt": prompt.prompt})
                self._emit(SampleImage(str(path), prompt.prompt, step, epoch, index))
        finally:
            borrowed.close()
            for module, mode in was_training.items():
                module.train(mode)
        self._status("training")

    def _ensure_run_dir(self) -> None:
        """A run folder deleted while training (by hand, a sync tool, a cleaner) is created
        again, so the work still in memory is saved; what was in it is gone, and the log says
        so. When it cannot be created again, the run stops saying exactly that."""
        if not self.is_main or self.run_dir is None or self.run_dir.is_dir():
            return
        lost = self.run_dir
        try:
            lost.mkdir(parents=True)
        except OSError as error:
            raise RunFolderLost(f"the run folder {lost} was deleted during training (at step {self.step}) and "
                                f"could not be created again ({error.strerror or error}); the LoRA trained so "
                                "far could not be saved") from None
        self._close_writers()
        self._open_log()
        lock = getattr(self, "_lock", None)
        if lock is not None:  # its file went with the folder
            lock.release()
            self._lock = RunFolderLock(lost).acquire()
        self._write_run_files(with_config=True)
        if self.last_checkpoint and not Path(self.last_checkpoint).exists():
            self.last_checkpoint = None
        if self.summary is not None:
            self.summary.write(lost)
        text = (f"the run folder {lost} was deleted during training (at step {self.step}); it was created "
                "again and training goes on. The log, metrics, checkpoints and samples from before were lost "
                "with it; the final LoRA will be saved there.")
        log.warning(text)
        self._emit(Status(text, "training"))

    def _close_writers(self) -> None:
        for closer in (self._metrics, self._tensorboard):
            if closer is not None:
                try:
                    closer.close()
                except OSError:
                    pass
        self._metrics = self._tensorboard = None
        if self._log_handler is not None:
            logging.getLogger("lorakiln").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    # ------------------------------------------------------------------ ending
    def _finish(self, reason: str) -> Finished:
        lora_path = None
        if reason in ("completed", "stopped") and self.network is not None:
            # Every process meets here (only the main one has a run folder and saves), so
            # none leaves while the others are still inside a collective operation.
            self.accelerator.wait_for_everyone()
            if self.is_main and self.run_dir is not None:
                final = self.run_dir / f"{self.config.output.output_name}.safetensors"
                lora_path = self._save_lora(final, "final")
                state_path = None
                if reason == "stopped" or self.config.output.save_state:
                    state_path = str(save_state(self.run_dir / STATE_DIR, self._state()))
                self._emit(CheckpointSaved(lora_path, self.step, self.epoch, "final", state_path))
        wall = self._wall_seconds()
        if self.summary is not None:
            self._complete_summary(reason, lora_path, wall)
        event = Finished(reason, str(self.run_dir) if self.run_dir else "", lora_path, self.step, self.epoch, wall,
                         self._skipped_steps)
        log.info("finished: %s after %d steps", reason, self.step)
        self._emit(event)
        return event

    @property
    def _skipped_steps(self) -> int:
        guard = self.guard
        return guard.skipped if guard is not None else getattr(self, "_skipped_before", 0)

    def _wall_seconds(self) -> float:
        if hasattr(self, "_train_started"):
            return self._wall_before + time.perf_counter() - self._train_started
        return self._wall_before

    def _complete_summary(self, status: str, lora_path: str | None, wall: float, error: str | None = None) -> None:
        summary = self.summary
        summary.status, summary.steps, summary.epochs = status, self.step, self.epoch
        summary.wall_seconds = wall
        if self._memory is not None:
            summary.peak_vram_mb, summary.peak_reserved_mb = self._memory.overall()
            summary.peak_by_phase = self._memory.by_phase()
        losses = getattr(self, "_epoch_losses", None)
        window = getattr(self, "_window", None)
        summary.final_loss = window._values[-1] if window is not None and window._values else None
        summary.mean_last_epoch_loss = getattr(self, "_last_epoch_mean", None) if not losses else sum(losses) / len(losses)
        summary.lora_path, summary.finished_at, summary.error = lora_path, time.time(), error
        summary.last_checkpoint, summary.skipped_steps = self.last_checkpoint, self._skipped_steps
        try:
            summary.write(self.run_dir)
        except OSError as err:  # a full disk must not hide the original outcome
            log.error("could not write the summary: %s", err)

    def _fail(self, error: BaseException) -> Failed:
        diagnosis = diagnose(error, self.config)
        trace = format_traceback(error)
        log.error("%s\n%s", diagnosis.summary, trace)
        if self.summary is not None:
            self._complete_summary("failed", None, self._wall_seconds(), diagnosis.summary)
        # Only files that exist: a run folder deleted under the run took its log with it.
        log_path = str(self.run_dir / LOG) if self.run_dir and (self.run_dir / LOG).is_file() else None
        checkpoint = self.last_checkpoint if self.last_checkpoint and Path(self.last_checkpoint).is_file() else None
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
        early = getattr(self, "_early_log", None)
        if early is not None:
            logging.getLogger("lorakiln").removeHandler(early)
            self._early_log = None
        self._close_writers()
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
        # Release the model and optimizer now (an out-of-memory run must leave the GPU usable
        # for the next run in the same process) and reset accelerate's process-wide state.
        loader, self._loader = getattr(self, "_loader", None), None
        if loader is not None:
            loader.close()
        self.network = self.optimizer = self.lr_scheduler = self.trained_models = self.computer = None
        self.dataset = self.guard = None
        distributed = self.accelerator is not None and self.accelerator.num_processes > 1
        # Not accelerator.free_memory(): it runs gc.collect() unconditionally, and in the GUI
        # collection belongs to the GUI thread. Dropping the accelerator drops its references.
        self.accelerator = None
        release_memory()
        setup.reset_accelerate_state(distributed)
        os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
