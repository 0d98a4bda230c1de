"""benchmarks/gpu_check.sh end to end on CPU at tiny sizes; train_step.py's --arch/--impl; network_g.compile."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codes.archs import build_network
from codes.utils.build import OptionError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import train_step  # noqa: E402

TINY = dict(type='BSRT', level=None, embed_dim=12, depths=[1, 1], num_heads=2, burst_size=2)


def test_train_step_arch_and_impl(capsys: pytest.CaptureFixture) -> None:
    """--arch builds a network by type name; both implementations run interleaved with a speed ratio."""
    args = ['--arch', 'BSRT', '--levels', 'S', '--net', 'level=null', '--net', 'embed_dim=12', '--net',
            'depths=[1,1]', '--net', 'num_heads=2', '--burst', '2', '--batch', '1', '--patch', '192',
            '--precisions', 'fp32', '--impl', 'reference', 'fast', '--steps', '1', '--reps', '2', '--warmup', '0']
    assert train_step.main(args) == 0
    table = capsys.readouterr().out
    assert '| BSRT | S | reference | fp32 |' in table and '| BSRT | S | fast | fp32 |' in table
    with pytest.raises(SystemExit):
        train_step.parse_args(['--arch', 'NoSuchNet'])


def test_compile_option_keeps_keys() -> None:
    plain = build_network(TINY)
    compiled = build_network(dict(TINY, compile=True))
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints unchanged: no _orig_mod. prefix
    assert compiled._compiled_call_impl is not None and plain._compiled_call_impl is None
    with pytest.raises(OptionError, match=r'network_g\.compile'):
        build_network(dict(TINY, compile='yes'))


@pytest.mark.skipif(os.environ.get('TEST_TORCH_COMPILE') != '1',
                    reason='compiling BSRT with inductor takes minutes on 2 CPU cores; set TEST_TORCH_COMPILE=1')
def test_compiled_forward_matches() -> None:
    torch.manual_seed(0)
    plain = build_network(TINY).eval()
    compiled = build_network(dict(TINY, compile=True)).eval()
    compiled.load_state_dict(plain.state_dict())
    x = torch.rand(1, 2, 4, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(shutil.which('bash') is None or shutil.which('timeout') is None, reason='needs bash and timeout')
def test_gpu_check_script_on_cpu(tmp_path: Path) -> None:
    """Every step of the GPU proof runs at tiny sizes on CPU and lands in one JSON report."""
    out = tmp_path / 'gc'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    res = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu_check.sh'), '--device', 'cpu', '--out', str(out),
                          '--python', sys.executable], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((out / 'gpu_check.json').read_text())
    assert report['status']['failed'] == 0
    rows = report['outputs']['rows']
    assert {r['net'] for r in rows} == {'BSRT-tiny', 'DCLS-tiny'}
    assert all(r['pass'] for r in rows if r['rel_err'] is not None)
    assert {r['impl'] for r in report['train_step']['rows']} == {'reference', 'fast'}
    assert report['train']['training_states'], report['train']
    assert report['resume']['params_equal'] and report['resume']['params_ema_equal'], report['resume']
    assert report['infer_tiny']['ms_per_burst'] > 0
    assert 'skipped' in report['onnx'] and report['onnx']['skipped']  # the CUDA-provider row says why it did not run


def test_demo_options_valid(sample_data) -> None:
    """The demo option file passes validation and its network builds (fast path by default)."""
    from codes.utils.options import load_yaml, validate_options
    path = ROOT / 'options' / 'demo_synthetic.yml'
    raw = load_yaml(path)
    raw['datasets']['train']['dataroot'] = str(sample_data / 'zurich')  # generated at the entry point, not here
    raw['datasets']['val']['dataroot'] = str(sample_data / 'SyntheticBurstVal')
    opt = validate_options(raw, str(path), is_train=True)
    assert opt['train']['total_iter'] == opt['train']['scheduler']['T_max']
    assert opt['train']['warmup_iter'] < opt['train']['total_iter'] and opt['train']['ema_decay'] > 0
    net = build_network(opt['network_g'])
    assert net.impl == 'auto'
