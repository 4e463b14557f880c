"""Code the tests share: starting runs, workers and servers, sample data, waiting on conditions,
and the emulated cluster. Test modules import it as `support.NAME` (tests/ is on sys.path)."""
