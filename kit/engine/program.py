"""From a catalog entry and checked values to a loaded program: the hook rung chosen, the recipe's
prepare and extra steps, the template rendered, BCC's compile. What kit runs (kit/engine/run.py) and what it
calibrates on first use (kit/guard/calibrate_offcpu.py) build their programs the same way, here."""

import threading

from kit.engine import render, uprobes
from kit.host import features
from kit.engine.contract import Context, hooks_of
from kit.errors import CompileError



def prepare(recipe, values, hook_type=None):
    """Everything up to (not including) compiling: returns (context, C text)."""
    hook = features.choose_hook(recipe, hook_type)
    ctx = Context(recipe=recipe, hook=hook, values=dict(values))
    hooks = hooks_of(recipe)
    if hooks.prepare:
        hooks.prepare(ctx)
    if hook.type in uprobes.HOOK_TYPES and not ctx.planned_uprobes:
        uprobes.plan(ctx)  # every symbol checked before anything attaches
    if hooks.extra:
        ctx.extra = hooks.extra(ctx)
    if recipe.output == "stream" or recipe.stream_form is not None:  # the buffer: kit/engine/stream.py decides
        from kit.engine import stream
        ctx.extra = {**stream.extra(ctx), **ctx.extra}
    ctx.task_offsets = render.task_offsets(ctx.values, ctx.notes)  # what --comm's rule reads
    text = render.render(recipe, hook, ctx.values, ctx.extra, task=ctx.task_offsets)
    return ctx, text


_COMPILING = threading.Lock()  # runs side by side (kit triage's first look) compile one at a time


def compile_program(text, debug=False):
    from bcc import BPF  # imported late so `kit list/show` work without bcc
    try:
        with _COMPILING:
            return BPF(text=text.encode(), cflags=["-Wno-unused-function", "-Wno-unused-variable"])
    except Exception as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CompileError(f"BCC could not compile or load the program: {msg}",
                           "run `kit doctor`; rerun with --debug to see the compiler output") from e
