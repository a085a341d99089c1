"""Root conftest: only loads the cni-e2e pytest plugin (the work lives in fixtures/)."""

pytest_plugins = ["fixtures.plugins"]
