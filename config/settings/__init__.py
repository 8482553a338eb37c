"""Settings modules: `development` (default), `test` and `production`, all read from the environment."""
