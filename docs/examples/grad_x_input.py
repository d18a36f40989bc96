# Copy to src/seg_explain/explainers/grad_x_input.py, then run
#   seg-explain methods --markdown --write README.md
from .base import Context
from .engine import single_from_multi
from .gradients import gradient_multi
from .registry import Capabilities, Cost, MethodSpec, register


def grad_x_input_multi(ctxs):
    res = yield from gradient_multi(ctxs)                 # shared forward, one backward per class
    return [(ctx.x * g, extras) for ctx, (g, extras) in zip(ctxs, res)]


def grad_x_input(ctx: Context):
    return (yield from single_from_multi(grad_x_input_multi)(ctx))


register(MethodSpec(
    "grad_x_input", grad_x_input, multi=grad_x_input_multi,
    title="Gradient × input", source="Shrikumar et al. 2016",
    question="the first-order contribution of each voxel's intensity to the RoI's summed logit",
    caps=Capabilities(dims=(2, 3), gradients=True, multiclass=True, map_kind="voxel"),
    unit="logit-sum units", positive="evidence for {cls}", negative="evidence against {cls}",
    cost=lambda info, p: Cost(forward=info.n_windows, backward=info.n_windows), cost_class="cheap"))
