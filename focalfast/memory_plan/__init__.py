"""Plan the GPU memory of training on a CPU: exact bytes of a training step, and what fits.

    StepPlanner(model_factory, backend, checkpointing, dtype, amp).measure(batch, resolution)
        -> StepMemory(state_bytes, saved_bytes, peak_bytes, forward_flops, step_flops)
    largest_fitting(peak_of, budget, start, limit, power)    the largest batch or resolution that fits
    LiveMemory, SavedTensors                                 the two counters, usable on their own
    cuda_autocast_policy()                                    CPU autocast that casts as CUDA's does

``focalfast plan`` (``focalfast.memory_plan.command``) is the command line.
"""

from focalfast.memory_plan.cuda_autocast import cuda_autocast_policy
from focalfast.memory_plan.live_memory import LiveMemory
from focalfast.memory_plan.models import model_factory, plannable_models
from focalfast.memory_plan.saved_tensors import SavedTensors
from focalfast.memory_plan.search import largest_fitting
from focalfast.memory_plan.training_step import StepMemory, StepPlanner

__all__ = ["LiveMemory", "SavedTensors", "StepMemory", "StepPlanner", "cuda_autocast_policy", "largest_fitting",
           "model_factory", "plannable_models"]
