"""Sampling: pure functions for flow-matching schedules and solvers, expert choice and guidance, and
I2V/TI2V conditioning. No I/O, no Ray, no torch.distributed.

Typical loop (the models are passed in; CFG and expert hand-off are the caller's)::

    schedule = make_schedule("reference", 40, 12.0, solver="unipc")
    solver = make_solver("unipc", schedule)
    experts = expert_schedule(schedule, boundary_ratio=0.875)
    for i, t in enumerate(schedule.timesteps):
        scale = guidance_scale_for(experts[i], 4.0, 3.0)
        v = apply_cfg(v_cond, v_uncond, scale)      # from expert experts[i] at timestep t
        latents = solver.step(v, i, latents)
"""

from wan_dist.sampling.conditioning import (
    i2v_condition,
    i2v_condition_video,
    i2v_mask,
    i2v_model_input,
    latent_shape,
    ti2v_first_frame_mask,
    ti2v_impose_first_frame,
    ti2v_token_timesteps,
)
from wan_dist.sampling.guidance import (
    HIGH_NOISE,
    LOW_NOISE,
    apply_cfg,
    expert_schedule,
    guidance_from_reference,
    guidance_scale_for,
    join_cfg_batch,
    select_expert,
    split_cfg_batch,
)
from wan_dist.sampling.schedules import (
    Schedule,
    diffusers_schedule,
    make_schedule,
    reference_schedule,
    shift_sigmas,
)
from wan_dist.sampling.solvers import (
    SOLVERS,
    DPMSolverPlusPlus,
    EulerSolver,
    Solver,
    SolverState,
    UniPCSolver,
    make_solver,
)

__all__ = [
    "Schedule", "reference_schedule", "diffusers_schedule", "make_schedule", "shift_sigmas",
    "Solver", "SolverState", "UniPCSolver", "DPMSolverPlusPlus", "EulerSolver", "SOLVERS", "make_solver",
    "HIGH_NOISE", "LOW_NOISE", "select_expert", "expert_schedule", "guidance_scale_for",
    "guidance_from_reference", "apply_cfg", "join_cfg_batch", "split_cfg_batch",
    "latent_shape", "i2v_condition_video", "i2v_mask", "i2v_condition", "i2v_model_input", "ti2v_first_frame_mask",
    "ti2v_impose_first_frame", "ti2v_token_timesteps",
]
