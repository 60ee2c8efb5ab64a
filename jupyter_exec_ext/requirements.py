"""The dependencies this package declares, checked where it loads: a refusal, not a hang later.

A server whose jupyter_server or jupyter_client is older than the range this package declares
(installed with ``--no-deps``, or upgraded past it by hand) would load the extension and then
fail inside every call. :func:`check_requirements` compares what is installed with what the
package's own metadata (``pyproject.toml``'s dependencies, as installed) asks for, so the
extension is refused at load time with one line that names each package and version.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

#: The distribution whose declared dependencies are checked.
DISTRIBUTION = "jupyter-exec-ext"


class DependencyError(RuntimeError):
    """An installed dependency is missing, or outside the range the package declares."""


def _applies(requirement: Requirement, extras: tuple[str, ...]) -> bool:
    """Whether a Requires-Dist line is one of the package's own or of one of ``extras``."""
    marker = requirement.marker
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in ("", *extras))


def unmet_requirements(
    *extras: str, distribution: str = DISTRIBUTION
) -> list[tuple[Requirement, str]]:
    """The dependencies ``distribution`` declares that are not met, each with what is wrong.

    Its own dependencies and those of ``extras`` (names as in ``pip install 'pkg[extra]'``;
    those of other extras, such as ``test``, are not checked). Empty when all
    are met, or when the distribution is not installed (run from a source tree): then there
    is no declared range to hold the environment to.
    """
    try:
        declared = requires(distribution) or []
    except PackageNotFoundError:
        return []
    unmet = []
    for line in declared:
        requirement = Requirement(line)
        if not _applies(requirement, extras):
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            unmet.append((requirement, f"{requirement.name} is not installed"))
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append((requirement, f"{requirement.name} {installed} is installed"))
    return unmet


def check_requirements(*extras: str, what: str = "jupyter_exec_ext") -> None:
    """Raise :class:`DependencyError` naming every unmet dependency (the package's own and
    those of ``extras``) and the install that meets them; ``what`` names what is refused."""
    unmet = unmet_requirements(*extras)
    if unmet:
        problems = "; ".join(f"{found}, it needs {req.name}{req.specifier}" for req, found in unmet)
        command = " ".join(f"'{req.name}{req.specifier}'" for req, _ in unmet)
        raise DependencyError(
            f"{what} is not enabled: {problems}. Install them with pip install {command}, "
            "then restart."
        )
