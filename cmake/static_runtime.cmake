# nekrs_ml_check_static_cxx_runtime(): warns at configure time when the compiler links the C++
# runtime statically into shared libraries (no libstdc++.so / libc++.so dependency), e.g. a g++
# whose specs add -static-libstdc++. nekrs_ml still works then: each of its libraries keeps its
# runtime's symbols to itself (--exclude-libs) and the in-process backend is reached through a C
# interface only. Sets NEKRS_ML_STATIC_CXX_RUNTIME in the caller's scope.
function(nekrs_ml_check_static_cxx_runtime)
  set(dir ${CMAKE_CURRENT_BINARY_DIR}/static_runtime_probe)
  file(WRITE ${dir}/probe.cpp
       "#include <string>\n#include <sstream>\nint main(int c, char**) {\n"
       "  std::stringstream s; s << std::string(\"n\") << c; return s.str().size() > 8; }\n")
  separate_arguments(shared_flags NATIVE_COMMAND "${CMAKE_SHARED_LINKER_FLAGS}")
  try_compile(built ${dir}/build SOURCES ${dir}/probe.cpp
              LINK_OPTIONS ${shared_flags}
              COPY_FILE ${dir}/probe COPY_FILE_ERROR copy_error)
  set(static OFF)
  if(built AND NOT copy_error AND EXISTS ${dir}/probe)
    file(STRINGS ${dir}/probe dynamic_runtime REGEX "lib(stdc)?\\+\\+\\.so" LIMIT_COUNT 1)
    if(NOT dynamic_runtime)
      set(static ON)
      message(WARNING
        "nekrs_ml: ${CMAKE_CXX_COMPILER} links the C++ runtime statically (no libstdc++.so in "
        "what it links). nekrs_ml keeps that runtime inside each of its libraries, but C++ code "
        "you link against libnekrsml (a NekRS udf) must come from the same compiler; if that is "
        "not what you want, configure with the system compiler (CXX=/usr/bin/g++).")
    endif()
  endif()
  set(NEKRS_ML_STATIC_CXX_RUNTIME ${static} PARENT_SCOPE)
endfunction()
