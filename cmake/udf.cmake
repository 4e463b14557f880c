# Case helper: builds a NekRS case's udf against nekrs_ml (docs/nekrs.md).
# NekRS's udf CMake project includes <case>/udf.cmake when it exists; in the case directory a
# udf.cmake of one line does it:
#   include("$ENV{NEKRS_ML_UDF_CMAKE}")      # path printed by `nekrs-ml config --udf-cmake`
# or copy this file next to the case .par under the name udf.cmake.
#
# It links the `udf` target against nekrs_ml::nekrsml and gives both the `udf` target and the
# `OKL` target (NekRS preprocesses the __okl__ section with it) the nekrs_ml include directory
# and NEKRS_ML_NEKRS_VERSION (24 or 25, from the installed NekRS header layout; override with
# -DNEKRS_ML_NEKRS_VERSION=.. or the environment variable of the same name). The plugin passes
# both on to OCCA for the kernels (nekrs_ml::nekrs::load_kernels).
if(NOT nekrs_ml_FOUND)
  set(_nekrs_ml_hint "$ENV{NEKRS_ML_CMAKE_DIR}")
  if(NOT _nekrs_ml_hint)
    find_program(_nekrs_ml_cli nekrs-ml)
    if(_nekrs_ml_cli)
      execute_process(COMMAND ${_nekrs_ml_cli} config --cmake-dir
        OUTPUT_VARIABLE _nekrs_ml_hint OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    endif()
  endif()
  find_package(nekrs_ml CONFIG REQUIRED HINTS "${CMAKE_CURRENT_LIST_DIR}" "${_nekrs_ml_hint}")
endif()

# --- NekRS API version ------------------------------------------------------------------------
if(NOT NEKRS_ML_NEKRS_VERSION AND DEFINED ENV{NEKRS_ML_NEKRS_VERSION})
  set(NEKRS_ML_NEKRS_VERSION "$ENV{NEKRS_ML_NEKRS_VERSION}")
endif()
if(NOT NEKRS_ML_NEKRS_VERSION)
  if(EXISTS "${NEKRS_INSTALL_DIR}/include/app/nrs/bdry/bcData.h")
    set(NEKRS_ML_NEKRS_VERSION 25)
  elseif(EXISTS "${NEKRS_INSTALL_DIR}/include/nrs/bdry/bcData.h")
    set(NEKRS_ML_NEKRS_VERSION 24)
  else()
    message(FATAL_ERROR "nekrs_ml: cannot tell the NekRS version from NEKRS_INSTALL_DIR="
      "'${NEKRS_INSTALL_DIR}'; set NEKRS_ML_NEKRS_VERSION=24 or 25 in the environment")
  endif()
endif()
message(STATUS "nekrs_ml: NekRS ${NEKRS_ML_NEKRS_VERSION}.x API")

# --- include directory for the udf, the OKL preprocessing and OCCA ------------------------------
get_target_property(_nekrs_ml_includes nekrs_ml::nekrsml INTERFACE_INCLUDE_DIRECTORIES)
if(NOT _nekrs_ml_includes)
  set(_nekrs_ml_includes "${nekrs_ml_INCLUDE_DIRS}")
endif()
list(GET _nekrs_ml_includes 0 _nekrs_ml_include_dir)

target_link_libraries(udf PRIVATE nekrs_ml::nekrsml)
target_compile_definitions(udf PRIVATE
  NEKRS_ML_NEKRS_VERSION=${NEKRS_ML_NEKRS_VERSION}
  NEKRS_ML_INCLUDE_DIR="${_nekrs_ml_include_dir}")
if(TARGET OKL)
  target_include_directories(OKL PRIVATE ${_nekrs_ml_includes})
  target_compile_definitions(OKL PRIVATE NEKRS_ML_NEKRS_VERSION=${NEKRS_ML_NEKRS_VERSION})
endif()
