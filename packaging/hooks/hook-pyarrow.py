# PyInstaller hook for pyarrow, replacing pyinstaller-hooks-contrib's, which takes every
# submodule, every shared library and every data file (headers, Cython sources, tests).
#
# Taken: every submodule except the parts the appliance never uses (below). Shared libraries
# are not listed: PyInstaller's binary dependency scan follows each extension module's NEEDED
# entries (RUNPATH $ORIGIN), so exactly the libraries the kept modules load come along, e.g.
# libarrow_s3 for pyarrow._s3fs, which object-store sync needs. Left out that way: Flight's
# libarrow_flight (about 30 MB) and libarrow_python_flight. libarrow_substrait stays: libarrow_python
# and pyarrow.lib link against it. ORC, GCS, Azure and HDFS live inside libarrow itself.
# No data files: headers, .pyx/.pxd sources and tests are for building against pyarrow.
from PyInstaller.utils.hooks import collect_submodules

UNUSED = {
    *("flight", "_flight"),
    *("substrait", "_substrait"),
    *("orc", "_orc", "_dataset_orc"),
    "gandiva",
    *("_gcsfs", "_azurefs", "_hdfs"),
    *("cuda", "_cuda", "jvm"),
    *("tests", "conftest", "_pyarrow_cpp_tests", "benchmark"),
}


def _wanted(name: str) -> bool:
    parts = name.split(".")[1:]
    if any(part in UNUSED for part in parts):
        return False
    # pkgutil lists pyarrow's unversioned C++ libraries (libarrow_python.so, ...) as extension
    # modules; they are copies of the versioned ones the dependency scan brings.
    return not any(part.startswith(("libarrow", "libparquet")) for part in parts)


hiddenimports = collect_submodules("pyarrow", filter=_wanted)
excludedimports = [f"pyarrow.{m}" for m in sorted(UNUSED)]
binaries = []
datas = []
