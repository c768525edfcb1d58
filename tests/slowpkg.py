"""A local package whose PEP 517 backend can stall, so a test can stop an env build mid-install.

``SLOWPKG_FLAG``: a file the backend writes (atomically, with its pid) when the build starts;
``SLOWPKG_SLEEP``: seconds it then waits before writing the wheel (``import slowpkg`` gives
``VALUE = 42``). Put ``FILES`` in a project and depend on ``./slowpkg``.
"""
from __future__ import annotations

BACKEND = '''
import os, pathlib, time, zipfile

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    flag = os.environ.get("SLOWPKG_FLAG")
    if flag:
        pathlib.Path(flag + ".tmp").write_text(str(os.getpid()))
        os.replace(flag + ".tmp", flag)
    time.sleep(float(os.environ.get("SLOWPKG_SLEEP", "0")))
    name = "slowpkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        zf.writestr("slowpkg.py", "VALUE = 42\\n")
        zf.writestr("slowpkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\\nName: slowpkg\\nVersion: 1.0\\n")
        zf.writestr("slowpkg-1.0.dist-info/WHEEL",
                    "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n")
        zf.writestr("slowpkg-1.0.dist-info/RECORD",
                    "slowpkg.py,,\\nslowpkg-1.0.dist-info/METADATA,,\\n"
                    "slowpkg-1.0.dist-info/WHEEL,,\\nslowpkg-1.0.dist-info/RECORD,,\\n")
    return name
'''

#: relative path -> content: the package's directory ``slowpkg/``
FILES = {
    "slowpkg/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                              'backend-path = ["."]\n\n[project]\nname = "slowpkg"\nversion = "1.0"\n',
    "slowpkg/backend.py": BACKEND,
}
