import subprocess
import sys

import pytest
from vssm_testing import REPO


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """A tiny generated dataset in all three layouts (cls/, coco/, ade/)."""
    out = tmp_path_factory.mktemp('demo_data')
    subprocess.run([sys.executable, str(REPO / 'tools' / 'make_demo_data.py'), '--out', str(out),
                    '--num-train', '8', '--num-val', '4', '--size', '96', '72', '--force'],
                   check=True, capture_output=True)
    return out
