"""Pytest configuration for the test suite (markers)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "notebook: executes a colabs/ notebook with nbclient in quick mode "
        '(slow; deselect with -m "not notebook")',
    )
