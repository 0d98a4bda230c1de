"""infer.py refuses what does not fit the model: a RAW burst for DCLS weights, an RGB image for BSRT weights, a
pickle that would run code, each as one line naming the input or the file, exit status 2."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from codes.archs import build_network
from codes.infer import infer_pipeline
from codes.utils.build import OptionError
from tests.test_infer.helpers import photo_rgb, tiny_bsrt, write_png_burst

pytestmark = pytest.mark.usefixtures('one_thread')

ROOT = Path(__file__).resolve().parents[2]
TINY_DCLS = {'type': 'DCLS', 'scale': 2, 'kernel_size': 11, 'nf': 8, 'nb': 1, 'ng': 1, 'reduction': 2,
             'input_para': 16}


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp('w')
    torch.manual_seed(0)
    torch.save({'params': build_network(TINY_DCLS).state_dict()}, d / 'dcls.pth')
    torch.save({'params': tiny_bsrt(0).state_dict()}, d / 'bsrt.pth')
    return d


def _photo(path: Path) -> Path:
    rgb = (photo_rgb(40, 48).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert cv2.imwrite(str(path), rgb[..., ::-1])
    return path


def test_dcls_weights_refuse_a_raw_burst(tmp_path, weights):
    write_png_burst(tmp_path / 'burst', 2, (24, 24))
    with pytest.raises(OptionError, match=r"option 'input': .*burst is a RAW burst .*weights are for DCLS"):
        infer_pipeline(['--weights', str(weights / 'dcls.pth'), '--input', str(tmp_path / 'burst'),
                        '--output', str(tmp_path / 'o'), '--device', 'cpu'])
    assert not list((tmp_path / 'o').glob('*.png'))  # nothing was written as if it were an RGB image
    one_frame = sorted((tmp_path / 'burst').glob('*.png'))[0]
    with pytest.raises(OptionError, match='is a RAW burst'):
        infer_pipeline(['--weights', str(weights / 'dcls.pth'), '--input', str(one_frame),
                        '--output', str(tmp_path / 'o'), '--device', 'cpu'])


def test_bsrt_weights_refuse_an_rgb_image(tmp_path, weights):
    folder = tmp_path / 'photos'
    folder.mkdir()
    _photo(folder / 'a.png')
    with pytest.raises(OptionError, match=r"option 'input': .*a\.png: a challenge-format frame is a 4-channel uint16 "
                       r'PNG.*\(BSRT weights'):
        infer_pipeline(['--weights', str(weights / 'bsrt.pth'), '--input', str(folder), '--output',
                        str(tmp_path / 'o'), '--device', 'cpu'])
    with pytest.raises(OptionError, match=r'a burst model takes a burst folder'):
        infer_pipeline(['--weights', str(weights / 'bsrt.pth'), '--input', str(_photo(tmp_path / 'b.jpg')),
                        '--output', str(tmp_path / 'o'), '--device', 'cpu'])


class _RunsCode:
    def __reduce__(self):
        return (print, ('this must never run',))


def test_code_running_pickle_is_one_line_without_torch_advice(tmp_path):
    code = tmp_path / 'code.pth'
    torch.save({'params': _RunsCode()}, code)
    res = subprocess.run([sys.executable, str(ROOT / 'infer.py'), '--weights', str(code), '--input', str(tmp_path),
                          '--output', str(tmp_path / 'o'), '--device', 'cpu'], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith(f'infer.py: error: {code}: cannot be loaded safely') and 'Traceback' not in res.stderr
    assert 'weights_only=False' not in res.stderr and 'this must never run' not in res.stdout
