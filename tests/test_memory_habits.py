"""sd-scripts' memory habits: a half-precision VAE at a batch size of its own that leaves the
GPU once latents are cached, text-encoder outputs cached when captions never change, frozen
weights in the training dtype, and a step that does not wait on the GPU before backward."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from core.config.schema import DEMO_MODEL, NonFinitePolicy, SubsetParams, TrainConfig, TrainingParams
from core.kohya.import_config import import_kohya
from core.models.family import TextConditioning
from core.models.sd1 import FAMILY as SD1
from core.training import placement, setup
from core.training.engine import Trainer
from core.training.events import Finished, ListSink, StepMetrics
from core.training.faults import NonFiniteGuard
from core.training.step import StepComputer, train_micro_batch
from core.training.text_cache import TextStateCache
from tests.engine_fixtures import tiny_config

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def _run(config: TrainConfig) -> tuple[Finished, ListSink]:
    sink = ListSink()
    result = Trainer(config, sink).run()
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", result)
    return result, sink


# ---------------------------------------------------------------- settings


def test_no_half_vae_vae_batch_size_and_workers_are_read_from_an_sd_scripts_config(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("no_half_vae = true\nvae_batch_size = 4\nmax_data_loader_n_workers = 3\n", encoding="utf-8")
    result = import_kohya([path])
    assert (result.config.model.no_half_vae, result.config.dataset.vae_batch_size,
            result.config.dataset.max_data_loader_n_workers) == (True, 4, 3)
    assert {m.key for m in result.mapped} >= {"no_half_vae", "vae_batch_size", "max_data_loader_n_workers"}


def test_kohya_ss_vae_batch_size_zero_means_not_set(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"vae_batch_size": 0, "pretrained_model_name_or_path": "x"}', encoding="utf-8")
    result = import_kohya([path])
    assert result.config.dataset.vae_batch_size == TrainConfig().dataset.vae_batch_size
    assert [u.key for u in result.ignored if u.key == "vae_batch_size"] == ["vae_batch_size"]


# ---------------------------------------------------------------- the VAE's dtype and place


def test_the_vae_is_half_on_a_gpu_and_fp32_on_a_cpu_or_when_asked() -> None:
    config = TrainConfig()
    assert placement.vae_dtype(config, SD1, torch.float16, CUDA) is torch.float16
    assert placement.vae_dtype(config, SD1, torch.bfloat16, CUDA) is torch.bfloat16
    assert placement.vae_dtype(config, SD1, torch.float16, CPU) is torch.float32
    config.model.no_half_vae = True
    assert placement.vae_dtype(config, SD1, torch.bfloat16, CUDA) is torch.float32


def test_a_vae_that_overflows_in_fp16_never_runs_in_it_but_may_in_bf16() -> None:
    config = TrainConfig()
    overflowing = SimpleNamespace(vae_fp16_unsafe=True)  # as SDXL's original VAE
    assert placement.vae_dtype(config, overflowing, torch.float16, CUDA) is torch.float32
    assert placement.vae_dtype(config, overflowing, torch.bfloat16, CUDA) is torch.bfloat16


def _network(weight_dtype: torch.dtype, train_text_encoder: bool = False) -> setup.Network:
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.network.dim, config.network.train_text_encoder = 4, train_text_encoder
    return setup.load_network(config, CPU, weight_dtype, lambda: False, lambda text: None)


def test_frozen_weights_take_the_training_dtype_and_lora_weights_stay_fp32() -> None:
    network = _network(torch.float16, train_text_encoder=True)
    for module in (network.components.unet, network.components.text_encoders["text_encoder"]):
        frozen = {p.dtype for p in module.parameters() if not p.requires_grad}
        trained = {p.dtype for p in module.parameters() if p.requires_grad}
        assert frozen == {torch.float16} and trained == {torch.float32}


def test_the_vae_is_loaded_in_the_dtype_placement_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "vae_dtype", lambda config, family, dtype, device: torch.bfloat16)
    vae = _network(torch.float32).components.vae
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}


def test_a_half_vae_that_makes_nan_encodes_that_batch_again_in_fp32() -> None:
    class Overflowing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16), requires_grad=False)

        def encode(self, pixels: torch.Tensor):  # noqa: ANN202
            bad = self.weight.dtype != torch.float32
            mean = pixels[:, :1, ::8, ::8] * (float("inf") if bad else 1.0)

            class Dist:
                latent_dist = type("D", (), {"mean": mean, "std": torch.zeros_like(mean)})

            return Dist

    components = type("C", (), {"vae": Overflowing(), "vae_scale_factor": 1.0})()
    latents = setup.vae_encoder(components, CPU, seed=0)(torch.ones(2, 3, 16, 16))
    assert torch.isfinite(latents).all()
    assert components.vae.weight.dtype is torch.bfloat16  # back in its own dtype afterwards


class _Recorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.moves: list[str] = []

    def to(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        device = torch.device(args[0]) if args else kwargs["device"]
        self.moves.append(device.type)
        return self


def test_sampling_borrows_an_offloaded_module_and_gives_it_back() -> None:
    module = _Recorder()
    with placement.on_device(module, torch.device("meta")):
        assert module.moves == ["meta"]
    assert module.moves == ["meta", "cpu"]


def test_a_module_already_where_it_is_needed_is_not_moved() -> None:
    module = _Recorder()
    with placement.on_device(module, CPU):
        pass
    assert module.moves == []


def _fixed_captions(tmp_path: Path, steps: int = 4) -> TrainConfig:
    config = tiny_config(tmp_path, steps=steps)
    config.dataset.subsets[0].shuffle_caption = False
    config.network.train_text_encoder = False
    return config


def test_after_caching_the_vae_and_a_frozen_text_encoder_leave_the_gpu(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    offloaded: list[str] = []
    real = placement.offload
    monkeypatch.setattr(placement, "offload", lambda module: offloaded.append(type(module).__name__) or real(module))
    _run(_fixed_captions(tmp_path))
    assert offloaded == ["AutoencoderKL", "CLIPTextModel"]


def test_without_a_latent_cache_the_vae_stays_for_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offloaded: list[str] = []
    monkeypatch.setattr(placement, "offload", lambda module: offloaded.append(type(module).__name__))
    config = tiny_config(tmp_path, steps=2)  # shuffled captions: the text encoder stays too
    config.dataset.latent_cache = config.dataset.latent_cache.OFF
    _run(config)
    assert offloaded == []


def test_latents_are_encoded_at_the_vae_batch_size_not_the_training_batch(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = setup.vae_encoder

    def counting(components, device, seed):  # noqa: ANN001, ANN202
        encode = real(components, device, seed)
        return lambda pixels: sizes.append(len(pixels)) or encode(pixels)

    monkeypatch.setattr(setup, "vae_encoder", counting)
    config = tiny_config(tmp_path, steps=1)  # training batch 2
    config.dataset.vae_batch_size = 3
    _run(config)
    assert max(sizes) == 3 and sum(sizes) == 10  # 5 images, each also flipped


# ---------------------------------------------------------------- text-encoder outputs


def _rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    rows: list[int] = []
    real = StepComputer.text

    def counting(self, captions):  # noqa: ANN001, ANN202
        rows.append(len(captions))
        return real(self, captions)

    monkeypatch.setattr(StepComputer, "text", counting)
    return rows


def test_fixed_captions_are_encoded_once_each_and_train_the_same(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows(monkeypatch)
    _, cached = _run(_fixed_captions(tmp_path / "cached", steps=6))
    assert sum(rows) == 5  # five images, five distinct captions, over three epochs
    monkeypatch.setattr(placement, "can_cache_text_states", lambda config, subsets: False)
    _, direct = _run(_fixed_captions(tmp_path / "direct", steps=6))
    assert sum(rows) > 5 + 6
    losses = [e.loss for e in cached.of(StepMetrics)]
    assert losses == pytest.approx([e.loss for e in direct.of(StepMetrics)], rel=1e-5, abs=1e-7)


def test_shuffled_captions_are_encoded_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows(monkeypatch)
    _run(tiny_config(tmp_path, steps=3))  # shuffle_caption on
    assert len(rows) == 3


@pytest.mark.parametrize("option", ["shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate"])
def test_any_caption_augmentation_or_a_trained_text_encoder_rules_caching_out(option: str) -> None:
    config = TrainConfig()
    config.network.train_text_encoder = False
    fixed = SubsetParams()
    assert placement.can_cache_text_states(config, [fixed])
    changing = SubsetParams(**{option: True if option == "shuffle_caption" else 0.1})
    assert not placement.can_cache_text_states(config, [fixed, changing])
    config.network.train_text_encoder = True
    assert not placement.can_cache_text_states(config, [fixed])


def test_the_text_cache_names_a_caption_it_never_saw() -> None:
    cache = TextStateCache()
    cache.fill(["a"], lambda captions: TextConditioning(torch.zeros(len(captions), 2, 3)))
    assert cache.conditioning(["a", "a"], CPU).states.shape == (2, 2, 3)
    with pytest.raises(LookupError, match="'b'"):
        cache.conditioning(["b"], CPU)


def test_the_text_cache_keeps_a_pooled_embedding_per_caption() -> None:
    cache = TextStateCache()
    cache.fill(["a", "b"], lambda captions: TextConditioning(
        torch.zeros(len(captions), 2, 3), torch.arange(len(captions) * 4.0).reshape(len(captions), 4)))
    both = cache.conditioning(["b", "a", "b"], CPU)
    assert both.states.shape == (3, 2, 3)
    assert both.pooled.tolist() == [[4, 5, 6, 7], [0, 1, 2, 3], [4, 5, 6, 7]]


# ---------------------------------------------------------------- no wait before backward


class _Loss:
    def __init__(self, order: list[str], value: float) -> None:
        self.order, self.value = order, value

    def __truediv__(self, other: float) -> "_Loss":
        return self

    def detach(self) -> "_Loss":
        return self

    def item(self) -> float:
        self.order.append("read loss")
        return self.value


class _Accelerator:
    num_processes = 1

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def backward(self, loss: _Loss) -> None:
        self.order.append("backward")

    def clip_grad_norm_(self, params, norm) -> None:  # noqa: ANN001
        pass


class _Optimizer:
    def __init__(self, order: list[str]) -> None:
        self.order, self.param_groups = order, [{"params": []}]

    def step(self) -> None:
        self.order.append("optimizer step")

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


def _order(policy: NonFinitePolicy, value: float = 0.5) -> list[str]:
    order: list[str] = []
    computer = type("Computer", (), {"loss": lambda self, batch: _Loss(order, value)})()
    batch = type("Batch", (), {"keys": ["a.png"]})()
    guard = NonFiniteGuard(TrainingParams(nonfinite_loss=policy))
    train_micro_batch(_Accelerator(order), computer, _Optimizer(order), [], guard, batch, 1, 1.0, 1, True)
    return order


def test_with_the_stop_policy_the_loss_is_read_after_the_optimizer_step_is_queued() -> None:
    assert _order(NonFinitePolicy.STOP) == ["backward", "optimizer step", "read loss"]


def test_with_the_skip_policy_backward_is_queued_before_the_loss_is_read() -> None:
    assert _order(NonFinitePolicy.SKIP) == ["backward", "read loss", "optimizer step"]
    assert _order(NonFinitePolicy.SKIP, float("nan")) == ["backward", "read loss"]  # no step for a NaN


def _load_network_asked(config: TrainConfig, monkeypatch: pytest.MonkeyPatch, processes: int) -> dict[str, object]:
    """What the engine asks load_network for on a stubbed CUDA device with ``processes``
    processes: the run stops at loading."""
    from types import SimpleNamespace

    from core.training import memory

    class Stop(Exception):
        pass

    asked: dict[str, object] = {}

    def load_network(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        asked.update(kwargs)
        raise Stop()

    fake = SimpleNamespace(device=torch.device("cuda"), num_processes=processes, is_main_process=True,
                           wait_for_everyone=lambda: None, scaler=None)
    monkeypatch.setattr(setup, "make_accelerator", lambda *a, **k: fake)
    monkeypatch.setattr(setup, "reset_accelerate_state", lambda distributed: None)
    real_source = memory.source_for
    monkeypatch.setattr(memory, "source_for", lambda device: real_source(CPU))
    monkeypatch.setattr(setup, "load_network", load_network)
    result = Trainer(config, ListSink()).run()
    assert "Stop" in getattr(result, "traceback", "")
    return asked


@pytest.mark.parametrize("processes, waits", [(1, True), (2, False)])
def test_on_one_gpu_the_unet_waits_on_the_cpu_until_caching_is_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    processes: int, waits: bool) -> None:
    """The engine asks load_network to keep the U-Net on the CPU on a single CUDA device (and
    not under DDP, which wraps a model on its device)."""
    asked = _load_network_asked(tiny_config(tmp_path, steps=1), monkeypatch, processes)
    assert asked["unet_device"] == (CPU if waits else None)
    assert asked["encoders_wait"] is False  # the tiny config shuffles captions: no text cache


@pytest.mark.parametrize("processes, waits", [(1, True), (2, False)])
def test_on_one_gpu_cached_text_encoders_wait_on_the_cpu_while_latents_are_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int, waits: bool) -> None:
    config = tiny_config(tmp_path, steps=1)
    config.network.train_text_encoder = False
    for subset in config.dataset.subsets:
        subset.shuffle_caption = False
    assert _load_network_asked(config, monkeypatch, processes)["encoders_wait"] is waits


def test_waiting_text_encoders_stay_on_the_cpu_and_trained_ones_do_not() -> None:
    cuda = torch.device("cuda")
    assert setup.component_home("text_encoder", False, cuda, CPU, encoders_wait=True) == CPU
    assert setup.component_home("text_encoder_2", True, cuda, CPU, encoders_wait=True) == cuda  # it trains
    assert setup.component_home("text_encoder", False, cuda, CPU, encoders_wait=False) == cuda
    assert setup.component_home("unet", True, cuda, CPU, encoders_wait=True) == CPU
    assert setup.component_home("unet", True, cuda, None, encoders_wait=True) == cuda


def test_the_engine_brings_waiting_text_encoders_to_the_device_to_encode_captions(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch):
    """A CPU run with encoders_wait forced on: the encoders start on the CPU either way, so the
    check is that caching moves each one to the engine's device first (spied) and trains."""
    events: list[str] = []
    real = setup.load_network

    def load_network(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        network = real(*args, **{**kwargs, "encoders_wait": True})
        encoder = network.components.text_encoders["text_encoder"]
        original_to, original_forward = encoder.to, encoder.forward
        encoder.to = lambda *a, **k: events.append("to") or original_to(*a, **k)
        encoder.forward = lambda *a, **k: events.append("encode") or original_forward(*a, **k)
        return network

    monkeypatch.setattr(setup, "load_network", load_network)
    config = tiny_config(tmp_path, steps=1)
    config.network.train_text_encoder = False
    for subset in config.dataset.subsets:
        subset.shuffle_caption = False
    result = Trainer(config, ListSink()).run()
    assert getattr(result, "reason", None) == "completed", getattr(result, "traceback", result)
    assert "encode" in events and events.index("to") < events.index("encode")  # to the device, then encode



def test_placing_the_unet_keeps_its_parameters_and_the_optimizer_state() -> None:
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.network.dim, config.network.train_text_encoder = 4, False
    network = setup.load_network(config, CPU, torch.float32, lambda: False, lambda text: None, unet_device=CPU)
    optimizer, _ = setup.make_optimizer_and_schedule(config, network, 10)
    lora = network.handles.params(("unet",))
    for param in lora:
        param.grad = torch.ones_like(param)
    optimizer.step()
    before = [{k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)} for p in lora]
    assert before[0]  # the optimizer keeps state for its parameters
    setup.place_unet(network, CPU, optimizer)  # already there: nothing moves, nothing is lost
    assert all(a is b for a, b in zip(network.handles.params(("unet",)), lora))
    after = [{k: v for k, v in optimizer.state[p].items() if torch.is_tensor(v)} for p in lora]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(after, before) for k in b)
