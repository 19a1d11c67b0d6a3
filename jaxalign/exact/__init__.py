r"""Exact finite-n laws: the reward distribution, best-of-N and tilted laws.

For a memoryless model with a linear reward, the sequence reward
``R = sum_i r(y_i)`` is a sum of ``n`` i.i.d. token rewards, so its law is an
``n``-fold convolution.  When the token rewards sit on a lattice,
``r(x) = a + h k_x`` with integers ``k_x``, the law lives on the points
``n a + h s`` (``s = 0 .. n max k``) and is computed here with *relative*
accuracy deep into both tails (see :func:`reward_law`).  Everything downstream
(best-of-N, tilted laws, tails) depends on a sequence only through ``R``, so it
is computed exactly on this law, for any ``N`` (even ``N = e^{1000}``).

Everything is computed with NumPy/SciPy in float64, whatever the JAX x64 mode:
the shapes depend on the data (so nothing here is traceable under ``jit``) and
the accuracy targets need float64.  Results are JAX arrays in the model's dtype.
"""

from jaxalign._types import adopt_public_names
from jaxalign.exact._best_of_n import BestOfNResult as BestOfNResult
from jaxalign.exact._best_of_n import _bon_core as _bon_core
from jaxalign.exact._best_of_n import _law_prep as _law_prep
from jaxalign.exact._best_of_n import best_of_n as best_of_n
from jaxalign.exact._best_of_n import best_of_n_from_law as best_of_n_from_law
from jaxalign.exact._best_of_n import best_of_n_report as best_of_n_report
from jaxalign.exact._lattice import RewardLaw as RewardLaw
from jaxalign.exact._lattice import bahadur_rao_log_tail as bahadur_rao_log_tail
from jaxalign.exact._lattice import log_tail as log_tail
from jaxalign.exact._lattice import reward_law as reward_law
from jaxalign.exact._lattice import tilted_law as tilted_law
from jaxalign.exact._policies import PolicyLaw as PolicyLaw
from jaxalign.exact._policies import policy_law as policy_law
from jaxalign.exact._policies import policy_law_from_law as policy_law_from_law

__all__ = [
    "RewardLaw",
    "BestOfNResult",
    "reward_law",
    "tilted_law",
    "best_of_n",
    "best_of_n_from_law",
    "log_tail",
    "bahadur_rao_log_tail",
    "PolicyLaw",
    "policy_law",
    "policy_law_from_law",
    "best_of_n_report",
]

# The public names are documented (and doctested) as members of this package.
adopt_public_names(globals())
