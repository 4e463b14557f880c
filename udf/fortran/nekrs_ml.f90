! nekrs_ml Fortran module (Fortran 2008, iso_c_binding): the C API of nekrs_ml.h for Fortran
! solvers. Compile it with your program and link libnekrsml:
!   gfortran -c $(nekrs-ml config --fortran-module) && gfortran prog.f90 nekrs_ml.o \
!     $(nekrs-ml config --libs)
! Every function returns a status (NKML_OK = 0 or an NKML_E_* code); nkml_last_error() is the
! message of the last failure (a mismatch of array sizes found here returns NKML_E_CONFIG
! without a message). Arrays: a Fortran array a(d1, d2) is the C (row-major) tensor
! [d2, d1], so wall samples are inputs(n_in, n) and targets(n_out, n), one column per point.
module nekrs_ml
  use, intrinsic :: iso_c_binding
  implicit none
  private

  integer(c_int), parameter, public :: NKML_OK = 0, NKML_E_ERROR = 1, NKML_E_CONNECTION = 2, &
    NKML_E_TIMEOUT = 3, NKML_E_SERVER = 4, NKML_E_NOT_FOUND = 5, NKML_E_FORMAT = 6, &
    NKML_E_CONFIG = 7, NKML_E_MODEL = 8, NKML_E_WORKER_UNAVAILABLE = 9, NKML_E_PACKAGE_MISSING = 10
  integer(c_int), parameter, public :: NKML_FLOAT32 = 1, NKML_FLOAT64 = 2

  public :: nkml_last_error, nkml_client_from_env, nkml_client_free, nkml_put_tensor, &
    nkml_get_tensor, nkml_key_exists, nkml_stream_open, nkml_stream_free, nkml_stream_put, &
    nkml_stop_requested, nkml_mark_done, nkml_inference_open, nkml_inference_free, &
    nkml_inference_run

  interface nkml_put_tensor
    module procedure put_f32_1d, put_f32_2d, put_f64_1d, put_f64_2d
  end interface
  interface nkml_get_tensor
    module procedure get_f32_1d, get_f32_2d, get_f64_1d, get_f64_2d
  end interface
  interface nkml_stream_put
    module procedure stream_put_f32, stream_put_f64
  end interface

  interface
    function c_last_error() bind(C, name="nkml_last_error")
      import :: c_ptr
      type(c_ptr) :: c_last_error
    end function
    function c_strlen(s) bind(C, name="strlen")
      import :: c_ptr, c_size_t
      type(c_ptr), value :: s
      integer(c_size_t) :: c_strlen
    end function
    function c_client_from_env(client) bind(C, name="nkml_client_from_env")
      import :: c_ptr, c_int
      type(c_ptr) :: client
      integer(c_int) :: c_client_from_env
    end function
    subroutine c_client_free(client) bind(C, name="nkml_client_free")
      import :: c_ptr
      type(c_ptr), value :: client
    end subroutine
    function c_put_tensor(client, key, dtype, ndim, shape, data) bind(C, name="nkml_put_tensor")
      import :: c_ptr, c_int, c_char, c_int64_t
      type(c_ptr), value :: client, data
      character(kind=c_char) :: key(*)
      integer(c_int), value :: dtype, ndim
      integer(c_int64_t) :: shape(*)
      integer(c_int) :: c_put_tensor
    end function
    function c_get_tensor(client, key, dtype, out, capacity) bind(C, name="nkml_get_tensor")
      import :: c_ptr, c_int, c_char, c_size_t
      type(c_ptr), value :: client, out
      character(kind=c_char) :: key(*)
      integer(c_int), value :: dtype
      integer(c_size_t), value :: capacity
      integer(c_int) :: c_get_tensor
    end function
    function c_key_exists(client, key, exists) bind(C, name="nkml_key_exists")
      import :: c_ptr, c_int, c_char
      type(c_ptr), value :: client
      character(kind=c_char) :: key(*)
      integer(c_int) :: exists
      integer(c_int) :: c_key_exists
    end function
    function c_stream_open(client, ns, rank, max_snapshots, stream) bind(C, name="nkml_stream_open")
      import :: c_ptr, c_int, c_char
      type(c_ptr), value :: client
      character(kind=c_char) :: ns(*)
      integer(c_int), value :: rank, max_snapshots
      type(c_ptr) :: stream
      integer(c_int) :: c_stream_open
    end function
    subroutine c_stream_free(stream) bind(C, name="nkml_stream_free")
      import :: c_ptr
      type(c_ptr), value :: stream
    end subroutine
    function c_stream_put(stream, step, time, dtype, n, n_in, inputs, n_out, targets, written) &
        bind(C, name="nkml_stream_put")
      import :: c_ptr, c_int, c_long, c_double, c_int64_t
      type(c_ptr), value :: stream, inputs, targets
      integer(c_long), value :: step
      real(c_double), value :: time
      integer(c_int), value :: dtype
      integer(c_int64_t), value :: n, n_in, n_out
      integer(c_int) :: written
      integer(c_int) :: c_stream_put
    end function
    function c_stop_requested(client, ns, requested) bind(C, name="nkml_stop_requested")
      import :: c_ptr, c_int, c_char
      type(c_ptr), value :: client
      character(kind=c_char) :: ns(*)
      integer(c_int) :: requested
      integer(c_int) :: c_stop_requested
    end function
    function c_mark_done(client, ns) bind(C, name="nkml_mark_done")
      import :: c_ptr, c_int, c_char
      type(c_ptr), value :: client
      character(kind=c_char) :: ns(*)
      integer(c_int) :: c_mark_done
    end function
    function c_inference_open(client, ns, rank, workers, timeout, inference) &
        bind(C, name="nkml_inference_open")
      import :: c_ptr, c_int, c_char, c_double
      type(c_ptr), value :: client
      character(kind=c_char) :: ns(*)
      integer(c_int), value :: rank, workers
      real(c_double), value :: timeout
      type(c_ptr) :: inference
      integer(c_int) :: c_inference_open
    end function
    subroutine c_inference_free(inference) bind(C, name="nkml_inference_free")
      import :: c_ptr
      type(c_ptr), value :: inference
    end subroutine
    function c_inference_run(inference, model, rows, n_in, inputs, n_out, outputs, version) &
        bind(C, name="nkml_inference_run")
      import :: c_ptr, c_int, c_char, c_int64_t
      type(c_ptr), value :: inference, inputs, outputs
      character(kind=c_char) :: model(*)
      integer(c_int64_t), value :: rows, n_in, n_out
      integer(c_int64_t) :: version
      integer(c_int) :: c_inference_run
    end function
  end interface

contains

  ! A Fortran string as a NUL-terminated C string (trailing blanks removed).
  pure function c_string(text) result(out)
    character(len=*), intent(in) :: text
    character(kind=c_char) :: out(len_trim(text) + 1)
    integer :: i
    do i = 1, len_trim(text)
      out(i) = text(i:i)
    end do
    out(len_trim(text) + 1) = c_null_char
  end function

  ! The message of the last failure of this thread ("" after success).
  function nkml_last_error() result(message)
    character(len=:), allocatable :: message
    type(c_ptr) :: text
    character(kind=c_char), pointer :: chars(:)
    integer :: i, length
    text = c_last_error()
    length = int(c_strlen(text))
    call c_f_pointer(text, chars, [length])
    allocate(character(len=length) :: message)
    do i = 1, length
      message(i:i) = chars(i)
    end do
  end function

  integer(c_int) function nkml_client_from_env(client) result(status)
    type(c_ptr), intent(out) :: client
    status = c_client_from_env(client)
  end function

  subroutine nkml_client_free(client)
    type(c_ptr), intent(inout) :: client
    call c_client_free(client)
    client = c_null_ptr
  end subroutine

  integer(c_int) function put_f32_1d(client, key, data) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: key
    real(c_float), intent(in), target, contiguous :: data(:)
    status = c_put_tensor(client, c_string(key), NKML_FLOAT32, 1_c_int, &
                          [int(size(data), c_int64_t)], c_loc(data))
  end function

  integer(c_int) function put_f32_2d(client, key, data) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: key
    real(c_float), intent(in), target, contiguous :: data(:, :)
    status = c_put_tensor(client, c_string(key), NKML_FLOAT32, 2_c_int, &
                          [int(size(data, 2), c_int64_t), int(size(data, 1), c_int64_t)], c_loc(data))
  end function

  integer(c_int) function put_f64_1d(client, key, data) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: key
    real(c_double), intent(in), target, contiguous :: data(:)
    status = c_put_tensor(client, c_string(key), NKML_FLOAT64, 1_c_int, &
                          [int(size(data), c_int64_t)], c_loc(data))
  end function

  integer(c_int) function put_f64_2d(client, key, data) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: key
    real(c_double), intent(in), target, contiguous :: data(:, :)
    status = c_put_tensor(client, c_string(key), NKML_FLOAT64, 2_c_int, &
                          [int(size(data, 2), c_int64_t), int(size(data, 1), c_int64_t)], c_loc(data))
  end function

  integer(c_int) function get_f32_1d(client, key, data) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: key
    real(c_float), intent(inout), target, contiguous :: data(:)
    status = c_get_tensor(client, c_string(key), NKML_FLOAT32, c_loc(data), &
                          int(4 * size(data), c_size_t))
  end function

  integer(c_int) function get_f32_2d(client, key, data) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: key
    real(c_float), intent(inout), target, contiguous :: data(:, :)
    status = c_get_tensor(client, c_string(key), NKML_FLOAT32, c_loc(data), &
                          int(4 * size(data), c_size_t))
  end function

  integer(c_int) function get_f64_1d(client, key, data) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: key
    real(c_double), intent(inout), target, contiguous :: data(:)
    status = c_get_tensor(client, c_string(key), NKML_FLOAT64, c_loc(data), &
                          int(8 * size(data), c_size_t))
  end function

  integer(c_int) function get_f64_2d(client, key, data) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: key
    real(c_double), intent(inout), target, contiguous :: data(:, :)
    status = c_get_tensor(client, c_string(key), NKML_FLOAT64, c_loc(data), &
                          int(8 * size(data), c_size_t))
  end function

  integer(c_int) function nkml_key_exists(client, key, exists) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: key
    logical, intent(out) :: exists
    integer(c_int) :: flag
    flag = 0
    status = c_key_exists(client, c_string(key), flag)
    exists = flag /= 0
  end function

  integer(c_int) function nkml_stream_open(client, ns, rank, max_snapshots, stream) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: ns
    integer, intent(in) :: rank, max_snapshots
    type(c_ptr), intent(out) :: stream
    status = c_stream_open(client, c_string(ns), int(rank, c_int), int(max_snapshots, c_int), stream)
  end function

  subroutine nkml_stream_free(stream)
    type(c_ptr), intent(inout) :: stream
    call c_stream_free(stream)
    stream = c_null_ptr
  end subroutine

  ! One snapshot: inputs(n_in, n) and targets(n_out, n), one column per wall point.
  integer(c_int) function stream_put_f32(stream, step, time, inputs, targets, written) result(status)
    type(c_ptr), intent(in) :: stream
    integer, intent(in) :: step
    real(c_double), intent(in) :: time
    real(c_float), intent(in), target, contiguous :: inputs(:, :), targets(:, :)
    logical, intent(out) :: written
    integer(c_int) :: flag
    flag = 0
    written = .false.
    status = NKML_E_CONFIG  ! one column per point in both arrays
    if (size(targets, 2) /= size(inputs, 2)) return
    status = c_stream_put(stream, int(step, c_long), time, NKML_FLOAT32, &
                          int(size(inputs, 2), c_int64_t), int(size(inputs, 1), c_int64_t), &
                          c_loc(inputs), int(size(targets, 1), c_int64_t), c_loc(targets), flag)
    written = flag /= 0
  end function

  integer(c_int) function stream_put_f64(stream, step, time, inputs, targets, written) result(status)
    type(c_ptr), intent(in) :: stream
    integer, intent(in) :: step
    real(c_double), intent(in) :: time
    real(c_double), intent(in), target, contiguous :: inputs(:, :), targets(:, :)
    logical, intent(out) :: written
    integer(c_int) :: flag
    flag = 0
    written = .false.
    status = NKML_E_CONFIG  ! one column per point in both arrays
    if (size(targets, 2) /= size(inputs, 2)) return
    status = c_stream_put(stream, int(step, c_long), time, NKML_FLOAT64, &
                          int(size(inputs, 2), c_int64_t), int(size(inputs, 1), c_int64_t), &
                          c_loc(inputs), int(size(targets, 1), c_int64_t), c_loc(targets), flag)
    written = flag /= 0
  end function

  integer(c_int) function nkml_stop_requested(client, ns, requested) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: ns
    logical, intent(out) :: requested
    integer(c_int) :: flag
    flag = 0
    status = c_stop_requested(client, c_string(ns), flag)
    requested = flag /= 0
  end function

  integer(c_int) function nkml_mark_done(client, ns) result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: ns
    status = c_mark_done(client, c_string(ns))
  end function

  integer(c_int) function nkml_inference_open(client, ns, rank, workers, timeout, inference) &
      result(status)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: ns
    integer, intent(in) :: rank, workers
    real(c_double), intent(in) :: timeout
    type(c_ptr), intent(out) :: inference
    status = c_inference_open(client, c_string(ns), int(rank, c_int), int(workers, c_int), &
                              timeout, inference)
  end function

  subroutine nkml_inference_free(inference)
    type(c_ptr), intent(inout) :: inference
    call c_inference_free(inference)
    inference = c_null_ptr
  end subroutine

  ! Predictions outputs(n_out, n) of `model` for inputs(n_in, n); `version` is the model
  ! version that produced them.
  integer(c_int) function nkml_inference_run(inference, model, inputs, outputs, version) &
      result(status)
    type(c_ptr), intent(in) :: inference
    character(len=*), intent(in) :: model
    real(c_float), intent(in), target, contiguous :: inputs(:, :)
    real(c_float), intent(inout), target, contiguous :: outputs(:, :)
    integer(c_int64_t), intent(out) :: version
    version = 0
    status = NKML_E_CONFIG  ! one column of predictions per input column
    if (size(outputs, 2) /= size(inputs, 2)) return
    status = c_inference_run(inference, c_string(model), int(size(inputs, 2), c_int64_t), &
                             int(size(inputs, 1), c_int64_t), c_loc(inputs), &
                             int(size(outputs, 1), c_int64_t), c_loc(outputs), version)
  end function

end module nekrs_ml
