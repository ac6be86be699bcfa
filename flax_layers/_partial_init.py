"""Building an NNX module's structure once, then computing only some of its initial values.

Loading a checkpoint overwrites almost every parameter, so running the module's
random initialisers (for BERT-base, about 110M truncated-normal draws) would be
wasted work and would hold the weights twice. Instead the constructor is traced
once per configuration into a jaxpr (no FLOPs), which gives the module's
structure, and the parameters a checkpoint lacks, together with the dropout
streams, are computed by evaluating only the equations they depend on (dead
code elimination, then eager evaluation: no compilation of the whole
constructor). The values are those the constructor itself would produce.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any

import jax
import jax.extend.core as jex
from flax import nnx


@dataclasses.dataclass(frozen=True)
class TracedConstructor:
    """A module constructor traced once.

    Args:
      graphdef: the module's graph definition.
      abstract_state: its state with ``jax.ShapeDtypeStruct`` leaves.
      jaxpr: the constructor as a ``ClosedJaxpr`` from the ``rngs`` state leaves
        to the output leaves.
      named: ``{name: output leaf index}`` of the named variables.
      module_rngs: the module's ``RngState`` with output leaf indices as values.
      rngs_after: the ``rngs`` state after construction, with leaf indices as values.
    """

    graphdef: Any
    abstract_state: Any
    jaxpr: Any
    named: Mapping[str, int]
    module_rngs: Any
    rngs_after: Any

    def abstract_module(self) -> Any:
        """A new module with shape-only leaves (its Variables are its own)."""
        return nnx.merge(self.graphdef, jax.tree.map(lambda x: x, self.abstract_state))


def trace_constructor(
    construct: Callable[[nnx.Rngs], Any],
    named_variables: Callable[[Any], Mapping[str, nnx.Variable]],
    rngs_graphdef: Any,
    rngs_state: Any,
) -> TracedConstructor:
    """Traces ``construct(rngs)`` into a :class:`TracedConstructor` without computing values.

    Args:
      construct: builds the module from an ``nnx.Rngs``.
      named_variables: ``{name: Variable}`` of a module, the values one may ask for.
      rngs_graphdef: ``nnx.split(rngs)[0]``.
      rngs_state: ``nnx.split(rngs)[1]`` (only its shapes matter).
    """
    box: dict[str, Any] = {}

    def run(state: Any) -> Any:
        rngs = nnx.merge(rngs_graphdef, state)
        module = construct(rngs)
        graphdef, full = nnx.split(module)
        box["graphdef"] = graphdef
        box["abstract"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), full)
        values = {name: var[...] for name, var in named_variables(module).items()}
        return values, nnx.state(module, nnx.RngState), nnx.state(rngs)

    closed, shapes = jax.make_jaxpr(run, return_shape=True)(rngs_state)
    leaves, treedef = jax.tree.flatten(shapes)
    named, module_rngs, rngs_after = jax.tree.unflatten(treedef, range(len(leaves)))
    return TracedConstructor(
        box["graphdef"], box["abstract"], closed, named, module_rngs, rngs_after
    )


def evaluate_outputs(closed: Any, wanted: Collection[int], args: list[Any]) -> dict[int, Any]:
    """Outputs ``wanted`` of ``closed`` at ``args``, evaluating only the equations they need."""
    jaxpr = closed.jaxpr
    wanted = set(wanted)
    needed = {
        v for i, v in enumerate(jaxpr.outvars) if i in wanted and not isinstance(v, jex.Literal)
    }
    kept = []
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in needed for v in eqn.outvars):
            kept.append(eqn)
            needed.update(v for v in eqn.invars if not isinstance(v, jex.Literal))
    env = dict(zip(jaxpr.constvars, closed.consts))
    env.update(zip(jaxpr.invars, args))

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jex.Literal) else env[v]

    for eqn in reversed(kept):
        out = eqn.primitive.bind(*map(read, eqn.invars), **eqn.params)
        env.update(zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]))
    return {i: read(jaxpr.outvars[i]) for i in wanted}


def initial_values(
    traced: TracedConstructor, rngs_state: Any, names: Collection[str]
) -> tuple[dict[str, jax.Array], Any, Any]:
    """The constructor's values of the variables ``names``, its dropout streams and ``rngs``.

    Returns:
      ``({name: value}, module RngState, rngs state after construction)``, the
      states ready for ``nnx.update``.
    """
    rng_leaves = jax.tree.leaves((traced.module_rngs, traced.rngs_after))
    wanted = [traced.named[n] for n in names] + rng_leaves
    out = evaluate_outputs(traced.jaxpr, wanted, jax.tree.leaves(rngs_state))
    values = {n: out[traced.named[n]] for n in names}
    module_rngs = jax.tree.map(out.__getitem__, traced.module_rngs)
    rngs_after = jax.tree.map(out.__getitem__, traced.rngs_after)
    return values, module_rngs, rngs_after
