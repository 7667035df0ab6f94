"""Option parsing and checks shared by the ``mridiff`` commands (``cli.py``): every bad value is refused with a
message naming the option, before any work starts."""

from __future__ import annotations

import functools
import math
import warnings

import click


class Number(click.ParamType):
    """A finite float within [low, high] (``low_open``: strictly above low): nan, inf and out-of-range values
    are refused naming the option."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r}: must be a finite number", param, ctx)
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            self.fail(f"{v:g}: must be {'>' if self.low_open else '>='} {self.low:g}", param, ctx)
        if self.high is not None and v > self.high:
            self.fail(f"{v:g}: must be <= {self.high:g}", param, ctx)
        return v


ACCELERATION = Number(low=1.0)
FRACTION = Number(low=0.0, high=1.0, low_open=True)
POSITIVE_INT = click.IntRange(min=1)


def check_acceleration(acceleration: float, mask_kind: str, center_fraction: float | None, hint: str = "-R") -> None:
    """A 1-D mask samples at least its fully sampled centre (a fraction cf of the columns), so R > 1/cf cannot be
    reached; a Poisson-disc mask needs R > 1 (sigpy)."""
    from mri_diffusion.physics.masks import default_center_fraction

    if mask_kind == "poisson":
        if acceleration <= 1:
            raise click.BadParameter(f"{acceleration:g}: a Poisson-disc mask needs R > 1", param_hint=hint)
        return
    cf = default_center_fraction(acceleration) if center_fraction is None else center_fraction
    if acceleration * cf > 1:
        raise click.BadParameter(
            f"{acceleration:g} cannot be reached: the fully sampled centre (centre fraction {cf:g}) alone samples "
            f"1/{1 / cf:.3g} of the columns; use R <= {1 / cf:.3g} or a smaller --center-fraction", param_hint=hint)


def refuse_unused(ctx: click.Context, method: str, applies: dict[str, tuple[str, ...]]) -> None:
    """Refuse options given on the command line that the chosen ``--method`` would ignore."""
    from click.core import ParameterSource

    for name, methods in applies.items():
        if method not in methods and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            opt = next(p.opts[0] for p in ctx.command.params if p.name == name)
            raise click.UsageError(f"{opt} applies to --method {' / '.join(methods)} only, not {method}")


def key_values(items, option: str) -> dict:
    """('a.b=1', 'c=[1, 2]') -> {'a.b': 1, 'c': [1, 2]} (values parsed as YAML)."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in split_pairs(items, option).items()}


def split_pairs(items, option: str) -> dict[str, str]:
    """('a=1', 'b=x') -> {'a': '1', 'b': 'x'}; BadParameter naming the option for an item without '='."""
    out = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise click.BadParameter(f"{item!r}: expected key=value", param_hint=option)
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def matrix(text: str | None, hint: str = "--full-matrix", sep: str = "x") -> tuple[int, int] | None:
    """'128x96' -> (128, 96): two positive integers, else BadParameter naming ``hint``."""
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split(sep))
    except ValueError:
        example = sep.join(("128", "128"))
        raise click.BadParameter(f"{text!r}: expected two integers H{sep}W, e.g. {example}", param_hint=hint) from None
    if h < 1 or w < 1:
        raise click.BadParameter(f"{text!r}: both sizes must be >= 1", param_hint=hint)
    return h, w


def device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda requested but CUDA is not available on this machine")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def message_only_warnings(ctx: click.Context) -> None:
    """Print warnings as 'warning: <message>' (no source line) for the rest of the command."""
    original = warnings.formatwarning
    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"warning: {message}\n"
    ctx.call_on_close(lambda: setattr(warnings, "formatwarning", original))


def friendly_errors(fn):
    """Turn data/user errors into click errors (exit 1) with the message; Ctrl-C -> 'Aborted!' (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .types import DataError

        try:
            return fn(*args, **kwargs)
        except (DataError, FileExistsError, FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
            if isinstance(e, RuntimeError) and type(e).__name__ != "TrainingError":
                raise
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise click.ClickException(msg) from None

    return wrapper


def setup_torch():
    """Denormals flushed to zero: without it, training and sampling ran 5-20x slower on CPU (DESIGN.md)."""
    import torch

    torch.set_flush_denormal(True)
