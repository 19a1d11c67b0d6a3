r"""Monte Carlo samplers for memoryless models: base, tilted, best-of-N and friends.

Every sampler is exact in law, key-first (a typed ``jax.random.key``) and
reproducible bit for bit: sample ``i`` uses the key ``fold_in(key, i)`` and
candidate ``j`` of sample ``i`` uses ``fold_in(fold_in(key, i), j)``, so the
numbers depend only on ``(key, configuration)``, never on ``chunk_size``,
``batch_size`` or how the sample indices are spread over devices (pass
``first_index`` to draw the block of samples ``first_index, first_index+1, ...``
of a larger run).  The PRNG implementation is the key's (``jax.random.key(seed,
impl="philox4x32")``).

Three sampling levels, chosen with ``level=`` (``method=`` before 0.3):

* ``"token"`` draws every token.  Tokens come from a Walker alias table over
  ``2^b >= K`` columns: one 32-bit random word per token, its top ``b`` bits pick
  a column and the rest are compared with the column's integer threshold, so a
  token costs O(1) whatever ``K`` (no ``jax.random.categorical``), and when only
  rewards are needed the per-token reward is gathered and summed in the same
  kernel.  Token probabilities are represented to ``2^-32`` (absolute).
* ``"counts"`` draws a sequence's token counts ``c ~ Multinomial(n, p)`` by
  conditional binomials, ``c_k ~ Bin(n - sum_{j<k} c_j, p_k / sum_{j>=k} p_j)``
  (inversion when the mean is at most 10, Hörmann's BTRS rejection otherwise;
  binomial ``k`` keyed by ``fold_in(key, k)``), and ``R = sum_k c_k r_k``: O(K)
  per sequence whatever ``n``, any rewards (lattice or not), exact in law up to
  the rounding of the binomials' float arithmetic (the model's dtype).  Every
  sampler that needs only ``R`` takes it (:func:`rewards`, :func:`tilted`,
  :func:`best_of_n` and its curve, :func:`soft_best_of_n`, :func:`rejection`,
  :func:`policy`), for a :class:`jaxalign.MemorylessLM`; no tokens are drawn.
* ``"law"`` draws the sequence reward ``R`` itself from its exact lattice law
  (:func:`jaxalign.exact.reward_law`) by inverting the CDF; best-of-N draws the
  maximum directly by inverting ``F^N`` in log space, at a cost independent of
  ``n`` and of ``N`` (``N`` may be astronomically large).

Best-of-N streams over candidates (a ``lax.scan`` over chunks carrying the running
maximum), so memory does not depend on ``N``.  Ties are broken by the first index
attaining the maximum, which over i.i.d. candidates is exactly uniform
tie-breaking (THEORY.md §1.9).
"""

from jaxalign._types import adopt_public_names
from jaxalign.sample._counts import _cost_length as _cost_length
from jaxalign.sample._counts import _counts_view as _counts_view
from jaxalign.sample._kernels import RejectionResult as RejectionResult
from jaxalign.sample._kernels import SampleResult as SampleResult
from jaxalign.sample._kernels import SelectionDraws as SelectionDraws
from jaxalign.sample._kernels import _alias_table as _alias_table
from jaxalign.sample._kernels import _draw_block as _draw_block
from jaxalign.sample._kernels import _gen_stage as _gen_stage
from jaxalign.sample._kernels import _law_table as _law_table
from jaxalign.sample._kernels import _LawGen as _LawGen
from jaxalign.sample._kernels import _Stage as _Stage
from jaxalign.sample._kernels import _token_stage as _token_stage
from jaxalign.sample._plain import rewards as rewards
from jaxalign.sample._plain import tilted as tilted
from jaxalign.sample._plain import tokens as tokens
from jaxalign.sample._policy import _reweighting as _reweighting
from jaxalign.sample._policy import policy as policy
from jaxalign.sample._policy import reweighted as reweighted
from jaxalign.sample._selection import _best_of_n_draws_only as _best_of_n_draws_only
from jaxalign.sample._selection import _best_of_n_impl as _best_of_n_impl
from jaxalign.sample._selection import best_of_n as best_of_n
from jaxalign.sample._selection import best_of_n_curve as best_of_n_curve
from jaxalign.sample._selection import best_of_n_from_law as best_of_n_from_law
from jaxalign.sample._selection import rejection as rejection
from jaxalign.sample._selection import rewards_from_law as rewards_from_law
from jaxalign.sample._selection import soft_best_of_n as soft_best_of_n
from jaxalign.sample._selection import token_budget as token_budget

__all__ = [
    "RejectionResult",
    "SampleResult",
    "SelectionDraws",
    "best_of_n",
    "best_of_n_curve",
    "best_of_n_from_law",
    "policy",
    "rejection",
    "reweighted",
    "rewards",
    "rewards_from_law",
    "soft_best_of_n",
    "tilted",
    "token_budget",
    "tokens",
]

# The public names are documented (and doctested) as members of this package.
adopt_public_names(globals())
