"""`nekrs-ml config`: what a case build needs to compile and link against nekrs_ml."""

from __future__ import annotations

import argparse

from ..environment import package_dir, udf_build_env  # noqa: F401 (re-exported by the CLI)
from .commands import command


@command("config", "print what a case build needs to compile and link against nekrs_ml")
def _config(parser: argparse.ArgumentParser):
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--includes", action="store_true", help="compiler flags: -I<dir>")
    group.add_argument("--libs", action="store_true",
                       help="linker flags: -L<dir> -lnekrsml -Wl,-rpath")
    group.add_argument("--cmake-dir", action="store_true",
                       help="directory for find_package(nekrs_ml) (nekrs_ml_DIR)")
    group.add_argument("--udf-cmake", action="store_true", help="path of the case helper udf.cmake")
    group.add_argument("--fortran-module", action="store_true",
                       help="path of the Fortran module source nekrs_ml.f90 (compile it with the "
                            "program; the C API it wraps is nekrs_ml.h under --includes)")
    group.add_argument("--udf-env", action="store_true",
                       help="`export` lines of NEKRS_ML_UDF_CMAKE and NEKRS_ML_CMAKE_DIR for a "
                            "NekRS case build")

    def run(args) -> int:
        base = package_dir()
        lib = base / "lib"
        if args.includes:
            print(f"-I{base / 'include'}")
        elif args.libs:
            print(f"-L{lib} -lnekrsml -Wl,-rpath,{lib}")
        elif args.fortran_module:
            print(base / "include" / "nekrs_ml.f90")
        elif args.cmake_dir:
            print(lib / "cmake" / "nekrs_ml")
        elif args.udf_env:
            for name, value in udf_build_env().items():
                print(f"export {name}={value}")
        else:
            print(lib / "cmake" / "nekrs_ml" / "udf.cmake")
        return 0
    return run
