# The wire contracts are one table, nekrs_ml/protocol.tsv. This turns it into the C header
# nekrs_ml/protocol.h (for the C++ core, the C API and the Redis module) and fills the constants
# of the C API header (nekrs_ml.h) and the Fortran module (nekrs_ml.f90) from their templates.
#
# nekrs_ml_generate_protocol(<table> <output dir>) writes
#   <output dir>/include/nekrs_ml/protocol.h, <output dir>/include/nekrs_ml.h,
#   <output dir>/fortran/nekrs_ml.f90
function(nekrs_ml_generate_protocol table out_dir)
  file(STRINGS ${table} lines ENCODING UTF-8)
  set(dtypes "")
  set(dtype_count 0)
  set(constants "")
  set(c_api_dtypes "")
  set(fortran_dtypes "")
  foreach(line IN LISTS lines)
    if(line MATCHES "^#" OR line STREQUAL "")
      continue()
    endif()
    string(REPLACE "\t" ";" fields "${line}")
    list(LENGTH fields field_count)
    if(NOT field_count EQUAL 7)
      message(FATAL_ERROR "${table}: expected 7 tab-separated fields in '${line}'")
    endif()
    list(GET fields 0 kind)
    list(GET fields 1 name)
    list(GET fields 2 value)
    list(GET fields 3 size)
    list(GET fields 4 redisai)
    list(GET fields 5 c_api)
    list(GET fields 6 description)
    string(TOUPPER "${name}" upper)
    if(kind STREQUAL "dtype")
      # The C type of an element: float32 -> float, float64 -> double, int8 -> int8_t, ...
      if(name STREQUAL "float32")
        set(ctype float)
      elseif(name STREQUAL "float64")
        set(ctype double)
      else()
        set(ctype "${name}_t")
      endif()
      string(APPEND dtypes " \\\n  X(${name}, ${value}, ${size}, ${redisai}, ${ctype})")
      math(EXPR dtype_count "${dtype_count} + 1")
      if(c_api STREQUAL "1")
        string(APPEND c_api_dtypes "#define NKML_${upper} ${value} /* ${description} */\n")
        if(fortran_dtypes)
          string(APPEND fortran_dtypes ", ")
        endif()
        string(APPEND fortran_dtypes "NKML_${upper} = ${value}")
      endif()
    elseif(kind MATCHES "^(tensor|key|env)$")
      string(TOUPPER "${kind}" prefix)
      if(value MATCHES "^[0-9]+$")
        set(literal "${value}")
      else()
        set(literal "\"${value}\"")
      endif()
      string(APPEND constants "#define NKML_${prefix}_${upper} ${literal} /* ${description} */\n")
      if(kind STREQUAL "tensor" AND name STREQUAL "max_rank")
        set(NKML_MAX_RANK ${value})
      endif()
    else()
      message(FATAL_ERROR "${table}: unknown kind '${kind}' in '${line}'")
    endif()
  endforeach()

  set(header "/* Generated from nekrs_ml/protocol.tsv by CMake (cmake/protocol.cmake): the wire
 * contracts of docs/protocol.md shared by the C++ core, the C API and the Redis module. */
#ifndef NEKRS_ML_PROTOCOL_H
#define NEKRS_ML_PROTOCOL_H

/* Every dtype of the tensor format: X(name, wire code, item size in bytes, RedisAI name, C type) */
#define NKML_DTYPES(X)${dtypes}
#define NKML_DTYPE_COUNT ${dtype_count}

${constants}
#endif /* NEKRS_ML_PROTOCOL_H */
")
  # Written only when it changes, so that a reconfigure does not rebuild everything.
  file(CONFIGURE OUTPUT ${out_dir}/include/nekrs_ml/protocol.h CONTENT "${header}" @ONLY)

  set(NKML_C_API_DTYPES "${c_api_dtypes}")
  set(NKML_FORTRAN_DTYPES "integer(c_int), parameter, public :: ${fortran_dtypes}")
  configure_file(${CMAKE_CURRENT_SOURCE_DIR}/udf/include/nekrs_ml.h.in
                 ${out_dir}/include/nekrs_ml.h @ONLY)
  configure_file(${CMAKE_CURRENT_SOURCE_DIR}/udf/fortran/nekrs_ml.f90.in
                 ${out_dir}/fortran/nekrs_ml.f90 @ONLY)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${table})
endfunction()
