"""Pipeline stages that live in modules of their own. Each module says what it reads from the run
directory, what it writes there, which recipe sections it depends on, and has a `run(...)` function."""
