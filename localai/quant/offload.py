"""Where the full-precision model runs while it samples its own calibration text.

Sampling runs the whole model at once, unlike the layer-by-layer calibration after it.
When the weights and what generation needs (the KV cache of GENERATE_BATCH sequences of
SEQ_LEN tokens, their logits, one step's activations) fit in the GPU's free memory with
the usual safety margin, the model moves there whole. When they do not, the modules that
fit go to the GPU and the rest stay in CPU memory, copied to the GPU one module at a time
as the forward pass reaches them (accelerate's offloading). Either way the model is back
on the CPU as plain tensors without hooks when sampling ends: calibration moves its
layers itself.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from localai.engine.sizing import ModelShape, mib, safety_margin
from localai.quant.calib_data import GENERATE_BATCH, SEQ_LEN


@dataclass(frozen=True)
class SamplingPlan:
    model_bytes: int  # parameters and buffers
    generation_bytes: int  # KV cache, logits, activations
    margin_bytes: int
    available_bytes: int

    @property
    def weight_budget(self) -> int:
        """Bytes of weights the device can hold next to the generation and the margin."""
        return max(self.available_bytes - self.generation_bytes - self.margin_bytes, 0)

    @property
    def fits(self) -> bool:
        return self.model_bytes <= self.weight_budget

    def line(self, device: str) -> str:
        """The arithmetic, for --verbose."""
        return (f"sampling memory ({device}): model {mib(self.model_bytes)} + generation "
                f"{mib(self.generation_bytes)} + margin {mib(self.margin_bytes)} against "
                f"{mib(self.available_bytes)} free: {'fits' if self.fits else 'does not fit'}")

    def streaming_notice(self, streamed: int, device: str) -> str:
        return (f"the model ({mib(self.model_bytes)}) does not fit in the {mib(self.available_bytes)} free on "
                f"{device} with room to sample: {mib(streamed)} of it is streamed from CPU memory, so sampling "
                "the calibration text is slower")


def plan_sampling(model_bytes: int, generation_bytes: int, available_bytes: int, total_bytes: int) -> SamplingPlan:
    """Whether a model of `model_bytes` samples on a device with `available_bytes` free of `total_bytes`."""
    return SamplingPlan(model_bytes=model_bytes, generation_bytes=generation_bytes,
                        margin_bytes=safety_margin(total_bytes), available_bytes=available_bytes)


def generation_memory(shape: ModelShape, batch: int = GENERATE_BATCH, seq_len: int = SEQ_LEN) -> int:
    """Memory of sampling `batch` sequences of `seq_len` tokens: KV cache, logits, one step's activations."""
    return (batch * seq_len * shape.kv_bytes_per_token + batch * shape.logits_bytes_per_sequence()
            + shape.workspace_bytes(batch))


@contextmanager
def _accelerate_quiet():
    """accelerate's notices (offloaded parameters sit on the meta device, buffer sizes) are its own
    bookkeeping here: the caller tells the user what happens in one line."""
    logger = logging.getLogger("accelerate")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def offload_device_map(model, gpu: int, budget: int) -> dict:
    """accelerate device map: modules in order on GPU `gpu` while they fit in `budget` bytes (less the
    largest module, which must fit when streamed), the rest on "cpu", streamed to the GPU when run."""
    import accelerate

    from localai.engine.sizing import tensor_bytes

    weights = tensor_bytes(model)
    with _accelerate_quiet():
        device_map = accelerate.infer_auto_device_map(
            model, max_memory={gpu: budget, "cpu": 2 * weights},  # in CPU memory already: never "disk"
            no_split_module_classes=list(getattr(model, "_no_split_modules", None) or []),
            clean_result=False)  # a cleaned map of one device is {"": "cpu"}, which dispatch cannot offload
    return dict(device_map)


def streamed_bytes(model, device_map: dict) -> int:
    """Bytes of the parameters and buffers that `device_map` leaves in CPU memory (shared ones once).
    Its keys name modules or single tensors; a tensor goes where its longest prefix among them goes."""
    seen, total = set(), 0
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        owner = max((key for key in device_map if not key or name == key or name.startswith(key + ".")), key=len)
        storage = tensor.untyped_storage()
        if device_map[owner] == "cpu" and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


@contextmanager
def dispatched(model, device_map: dict, main_device):
    """`model` run by accelerate: the modules `device_map` puts on "cpu" stay in CPU memory and are copied
    to `main_device` for each forward; the others move to their device. On exit every module is back on
    the CPU device the model came from, with no hooks and its tied weights tied again."""
    import accelerate
    from accelerate.hooks import remove_hook_from_module
    from accelerate.utils import find_tied_parameters, retie_parameters

    home = next(model.parameters()).device
    tied = find_tied_parameters(model)
    class_forward = [m for m in model.modules() if "forward" not in m.__dict__]
    missing = object()
    device_map_before = model.__dict__.get("hf_device_map", missing)
    try:
        with _accelerate_quiet():
            accelerate.dispatch_model(model, device_map, main_device=main_device, force_hooks=True,
                                      skip_keys=getattr(model, "_skip_keys_device_placement", None))
        yield model
    finally:
        remove_hook_from_module(model, recurse=True)  # offloaded modules get their CPU tensors back
        for module in class_forward:  # unhooked, a module keeps its old forward as an attribute of its own
            module.__dict__.pop("forward", None)
        model.to(home)  # the modules that ran on the GPU
        retie_parameters(model, tied)
        if device_map_before is missing:
            model.__dict__.pop("hf_device_map", None)
        else:
            model.hf_device_map = device_map_before


def _plan_on_gpu(model, gpu: int) -> SamplingPlan:
    from localai.engine.sizing import memory_info, tensor_bytes

    available, total = memory_info(f"cuda:{gpu}")
    shape = ModelShape.from_config(model.config.get_text_config(), next(model.parameters()).element_size())
    return plan_sampling(tensor_bytes(model), generation_memory(shape), available, total)


@contextmanager
def placed_for_sampling(model, device: str, notice=None, detail=None):
    """`model` on `device` for sampling, whole when it fits and partly streamed from CPU memory when
    it does not; yields the device for the prompts. `notice(text)` says when part is streamed,
    `detail(text)` gives the arithmetic."""
    home = next(model.parameters()).device
    if device.startswith("cuda"):
        import torch

        gpu = torch.device(device).index
        gpu = torch.cuda.current_device() if gpu is None else gpu
        plan = _plan_on_gpu(model, gpu)
        if detail:
            detail(plan.line(f"cuda:{gpu}"))
        if not plan.fits:
            device_map = offload_device_map(model, gpu, plan.weight_budget)
            if notice:
                notice(plan.streaming_notice(streamed_bytes(model, device_map), f"cuda:{gpu}"))
            with dispatched(model, device_map, main_device=gpu):
                yield torch.device("cuda", gpu)
            return
    try:
        model.to(device)  # sampling wants the fast device; the layers go back to `home` for calibration
        yield next(model.parameters()).device
    finally:
        model.to(home)
