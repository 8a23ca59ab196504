import pytest

from tests.io.layouts import C2Small


@pytest.fixture(scope="session")
def c2_small(her2st_c2, tmp_path_factory):
    """C2 counts (first 300 genes), coordinates and a 1/4-scale tiled TIFF of its H&E."""
    return C2Small(her2st_c2, tmp_path_factory.mktemp("c2_small"))
