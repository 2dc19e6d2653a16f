"""The notebooks' install cell in Colab: what it may change and when the session must restart.

The first code cell of every notebook installs augreg_nb into a running Colab kernel::

    before = {d.name: d.version for d in distributions()}
    AUGREG_NB_REF = "main"  # or a release tag, or a commit
    %pip install -q "augreg_nb @ git+https://github.com/augreg-nb/augreg_nb@{AUGREG_NB_REF}"
    from augreg_nb.colab import restart_note
    print(restart_note(before))

pip replaces files on disk, but a module the kernel has already imported stays in memory at
its old version until the session restarts. :func:`restart_note` compares the versions from
before the install with the ones on disk now and names every changed distribution whose
modules are already imported: those, and only those, need Colab's *Runtime > Restart
session*. Installing into Colab's own versions changes none of them (the check in
``tests/colab/`` proves it on the shipped version list), so the note normally says that no
restart is needed.

Only the standard library is used here, so importing this module right after the install
loads nothing that the install could have replaced.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata

#: Colab's menu entry that restarts the Python process (and keeps the files).
RESTART_MENU = "Runtime > Restart session"


def canonical_name(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Jupyter_Core`` -> ``jupyter-core``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict[str, str]:
    """``{canonical distribution name: version}`` of the distributions installed now.

    Where one name is installed twice, the first on ``sys.path`` wins, as for ``import``.
    """
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical_name(name), dist.version)
    return found


def imported_distributions(modules: Iterable[str] | None = None) -> set[str]:
    """Canonical names of the distributions that own an imported top-level module.

    ``modules`` defaults to ``sys.modules``; ``google.colab`` counts as ``google``, which
    several distributions (protobuf, google-auth, ...) share.
    """
    names = sys.modules if modules is None else modules
    owners = metadata.packages_distributions()
    tops = {name.partition(".")[0] for name in names}
    return {canonical_name(dist) for top in tops for dist in owners.get(top, ())}


@dataclasses.dataclass(frozen=True)
class Change:
    """One distribution whose installed version changed (``None``: not installed)."""

    name: str
    before: str | None
    after: str | None

    def __str__(self) -> str:
        return f"{self.name} {self.before or '(none)'} -> {self.after or '(removed)'}"


def changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[Change]:
    """Distributions added, removed or moved to another version, sorted by name.

    Names are compared in canonical form, so a snapshot taken with
    ``{d.name: d.version for d in distributions()}`` can be passed as it is.
    """
    old = {canonical_name(k): v for k, v in before.items()}
    new = {canonical_name(k): v for k, v in after.items()}
    return [Change(name, old.get(name), new.get(name))
            for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)]


def stale_imports(before: Mapping[str, str], after: Mapping[str, str] | None = None,
                  modules: Iterable[str] | None = None) -> list[Change]:
    """The changes that a running kernel does not see yet: distributions that existed before
    the install, changed, and own an already imported module.

    ``after`` defaults to :func:`installed_versions`, ``modules`` to ``sys.modules``.
    """
    after = installed_versions() if after is None else after
    imported = imported_distributions(modules)
    return [c for c in changes(before, after) if c.before is not None and c.name in imported]


def restart_note(before: Mapping[str, str], after: Mapping[str, str] | None = None,
                 modules: Iterable[str] | None = None) -> str:
    """One line for the install cell: whether the session must restart, and why.

    ``before`` is the ``{name: version}`` snapshot taken before ``pip install``.
    """
    after = installed_versions() if after is None else after
    stale = stale_imports(before, after, modules)
    if not stale:
        version = after.get("augreg-nb", "(not installed)")
        return (f"augreg_nb {version}: no package this kernel has imported changed, "
                "no restart needed.")
    return (f"Restart the session ({RESTART_MENU}), then run the notebook from the top: "
            f"pip changed packages this kernel has already imported: "
            f"{', '.join(str(c) for c in stale)}.")
