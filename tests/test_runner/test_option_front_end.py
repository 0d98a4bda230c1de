"""The option front end as a user meets it: malformed files of the demos give one line per problem and exit 2,
--print-options / --dry-run, console scripts, and the BasicSR habits (schedulers, metric names, keys)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from codes.test import test_pipeline as run_test_pipeline
from codes.train import train_pipeline
from codes.utils.errors import run_cli
from codes.utils.options import OptionError, OptionErrors, normalize_options, validate_options
from tests.test_runner.tiny import tiny_options, write_options

ROOT = Path(__file__).resolve().parents[2]


def demo_options(tmp_path: Path, which: str) -> dict:
    """A demo option file with its data folders pointed at empty folders under tmp_path (only their existence is
    checked before data is built) and no sample-data generation."""
    opt = yaml.safe_load((ROOT / 'options' / which).read_text())
    opt.pop('prepare_sample_data', None)
    opt.pop('prepare_blind_sample_data', None)
    for phase, ds in opt['datasets'].items():
        for k in [k for k in ds if k.startswith('dataroot')]:
            (tmp_path / phase / k).mkdir(parents=True, exist_ok=True)
            ds[k] = str(tmp_path / phase / k)
    return opt


def run_train_cli(tmp_path: Path, file: Path, capsys, *flags: str) -> tuple[int, str, str]:
    """train.py as its root script runs it (``run_cli``), in process; returns (exit status, stdout, stderr)."""
    try:
        run_cli(lambda: train_pipeline(tmp_path, ['-opt', str(file), *flags]), 'train.py')
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


S, D = 'demo_synthetic.yml', 'dcls/demo_dcls.yml'


def _set(path: str, value):
    def mutate(opt):
        *parents, last = path.split('.')
        node = opt
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return mutate


def _pop(path: str):
    def mutate(opt):
        *parents, last = path.split('.')
        node = opt
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


TEXT_VARIANTS = [  # (demo, text, pattern): files that do not parse into a mapping
    (S, 'name: [unclosed\nmodel_type: BurstSRModel\n', r'not valid YAML'),
    (S, '', r'the option file is empty'),
    (S, '- name: a\n- model_type: b\n', r'the top level must be a mapping.*list'),
    (S, 'name: !!python/object/apply:os.system ["echo hacked"]\n', r'not valid YAML'),
    (D, 'name: x\n\tmodel_type: BlindSRModel\n', r'not valid YAML'),
]

DICT_VARIANTS = [  # (demo, mutate, key path named in the message, pattern)
    (S, _pop('model_type'), 'model_type', 'required key is missing'),
    (S, _set('nmae', 'x'), 'nmae', "Did you mean 'name'"),
    (S, _set('train.total_iter', 'many'), 'train.total_iter', 'expected an integer'),
    (S, _set('train.total_iter', 0), 'train.total_iter', 'must be >= 1'),
    (S, _set('network_g.type', 'BSTR'), 'network_g.type', "Did you mean .*'BSRT'"),
    (S, _set('network_g.embed_dims', 8), 'network_g.embed_dims', "Did you mean 'embed_dim'"),
    (S, _set('datasets.train.type', 'SyntheticBurst'), 'datasets.train.type', 'No dataset named'),
    (S, _set('datasets.train.dataroot', '/nonexistent/zurich'), 'datasets.train.dataroot', 'does not exist'),
    (S, _set('datasets.train.batch_size_per_gpu', -2), 'datasets.train.batch_size_per_gpu', 'must be >= 1'),
    (S, _set('datasets.train.batch_size_per_gpu', 'two'), 'datasets.train.batch_size_per_gpu', 'expected an integer'),
    (S, _set('datasets.train.prefetch_mode', 'cuda'), 'datasets.train.prefetch_mode', 'pin_memory: true'),
    (S, _set('datasets', ['train']), 'datasets', 'expected a mapping'),
    (S, _set('train.optim_g.type', 'Adamm'), 'train.optim_g.type', "Did you mean 'Adam'"),
    (S, _set('train.optim_g.lr', 'fast'), 'train.optim_g.lr', 'expected a number'),
    (S, _set('train.optim_g.type', 'LBFGS'), 'train.optim_g.type', 'needs a closure'),
    (S, _set('train.scheduler.T_mx', 3), 'train.scheduler.T_mx', "Did you mean 'T_max'"),
    (S, _set('train.precision', 'fp8'), 'train.precision', 'must be one of fp32, fp16, bf16'),
    (S, _set('val.save_img', 'sometimes'), 'val.save_img', 'expected true or false'),
    (S, _set('val.metrics.psnr.border', 4), 'val.metrics.psnr.border', "unknown key for calculate_psnr_linear"),
    (S, _set('logger.print_freq', 0), 'logger.print_freq', 'must be >= 1'),
    (S, _set('dist_params.port', 'abc'), 'dist_params.port', 'expected an integer'),
    (D, _pop('train.optim_g'), 'train.optim_g', 'required key is missing'),
    (D, _set('train.kernel_opt.type', 'KernelLoss'), 'train.kernel_opt.type', 'No loss named'),
    (D, _set('train.lr_estimator', 'abc'), 'train.lr_estimator', 'expected a number'),
    (D, _set('train.pixel_opt.type', 'L2Loss'), 'train.pixel_opt.type', 'No loss named'),
    (D, _set('train.scheduler', {'type': 'LambdaLR'}), 'train.scheduler.type', 'lr_lambda is a Python function'),
    (D, _set('network_g.scale', 'x2'), 'network_g.scale', 'expected an integer'),
    (D, _set('datasets.training', {'type': 'BlindSRHRDataset'}), 'datasets.training', 'starts with train, val or test'),
]


@pytest.mark.parametrize('which, text, pattern', TEXT_VARIANTS)
def test_unreadable_files_exit_2_in_one_line(tmp_path, capsys, which, text, pattern):
    path = tmp_path / 'bad.yml'
    path.write_text(text)
    code, _, err = run_train_cli(tmp_path, path, capsys)
    assert code == 2 and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1 and re.search(rf'train.py: error: .*bad.yml: .*{pattern}', err), err


def test_demo_files_are_valid(tmp_path):
    for which in (S, D):
        validate_options(demo_options(tmp_path, which), which)


@pytest.mark.parametrize('which, mutate, key, pattern', DICT_VARIANTS)
def test_malformed_variants_name_the_key(tmp_path, capsys, which, mutate, key, pattern):
    opt = demo_options(tmp_path, which)
    mutate(opt)
    path = write_options(tmp_path / 'bad.yml', opt)
    code, _, err = run_train_cli(tmp_path, path, capsys)
    assert code == 2 and 'Traceback' not in err, err
    assert re.search(rf"bad.yml: option '{re.escape(key)}': .*{pattern}", err), err


def test_every_problem_of_a_file_is_listed(tmp_path, capsys):
    opt = demo_options(tmp_path, S)
    for mutate in (_set('nmae', 'x'), _set('train.optim_g.type', 'Adamm'), _set('train.optim_g.lr', 'x'),
                   _set('datasets.train.dataroot', '/nonexistent'), _set('datasets.train.batch_size_per_gpu', 0),
                   _set('network_g.embed_dims', 8), _set('logger.print_frq', 3)):
        mutate(opt)
    path = write_options(tmp_path / 'bad.yml', opt)
    code, _, err = run_train_cli(tmp_path, path, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and 'Traceback' not in err
    assert lines[0] == 'train.py: error: 6 problems in the options:'
    for key in ('nmae', 'train.optim_g.type', 'datasets.train.dataroot', 'datasets.train.batch_size_per_gpu',
                'network_g.embed_dims', 'logger.print_frq'):
        assert sum(f"bad.yml: option '{key}'" in line for line in lines[1:]) == 1, (key, err)
    with pytest.raises(OptionErrors) as info:  # the same list in process
        validate_options(opt, 'bad.yml')
    assert len(info.value.errors) == 6 and isinstance(info.value, OptionError)


def test_schema_defaults_are_filled_once(tmp_path):
    opt = normalize_options(validate_options(demo_options(tmp_path, D), 'd.yml'), tmp_path, is_train=True)
    assert opt['train']['kernel_opt'] == {'type': 'DCLSKernelLoss', 'loss_weight': 1.0}  # BlindSRModel's block
    assert opt['train']['ema_decay'] == 0.0 and opt['train']['warmup_iter'] == 0
    assert opt['logger']['keep_last'] == 0 and opt['logger']['wandb'] is None
    assert opt['dist_params'] == {'backend': None, 'timeout_minutes': 30.0, 'port': None}
    assert opt['datasets']['val']['num_worker_per_gpu'] == 0
    test = normalize_options(validate_options({**demo_options(tmp_path, D), 'path': {'pretrain_network_g': 'w.pth'}},
                                              'd.yml', is_train=False), tmp_path, is_train=False)
    assert test['val']['save_img'] is True  # evaluation writes images unless told not to
    real = normalize_options(validate_options({**demo_options(tmp_path, S), 'model_type': 'RealBurstSRModel'}),
                             tmp_path, True)
    assert real['val']['alignment']['flow_estimator'] == 'auto'
    with pytest.raises(OptionError, match=r"'val.alignment': unknown key"):  # only the real-track model has it
        validate_options({**demo_options(tmp_path, S), 'val': {'alignment': {}}})


def test_basicsr_habits(tmp_path):
    opt = demo_options(tmp_path, S)
    opt['logger']['wandb'] = {'project': 'bsrt', 'entity': None, 'resume_id': None}
    opt['dist_params'] = {'backend': 'gloo', 'port': 29511}
    opt['datasets']['train']['prefetch_mode'] = 'cpu'
    opt['val']['pbar'] = False
    opt['train']['warmup_iter'] = -1
    opt['train']['scheduler'] = {'type': 'CosineAnnealingRestartLR', 'periods': [150, 150], 'restart_weights': [1, 1],
                                 'eta_min': 1e-7}
    opt['val']['metrics'] = {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True},
                             'ssim': {'type': 'calculate_ssim', 'crop_border': 4}}
    checked = validate_options(opt, 'b.yml')
    assert checked['logger']['wandb']['project'] == 'bsrt'
    with pytest.raises(OptionError, match=r"'logger.wandb.projet': unknown key. Did you mean 'project'"):
        validate_options({**opt, 'logger': {'wandb': {'projet': 'x'}}}, 'b.yml')


def test_print_options_prints_the_resolved_options(tmp_path, capsys):
    path = write_options(tmp_path / 'demo.yml', demo_options(tmp_path, S))
    code, out, err = run_train_cli(tmp_path, path, capsys, '--print-options', '--set', 'train.optim_g.lr=5e-4')
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed['train']['optim_g']['lr'] == 5e-4 and printed['train']['nan_skip_limit'] == 100
    assert printed['path']['experiments_root'] == str(tmp_path / 'experiments' / 'demo_synthetic')
    assert printed['network_g']['window_size'] == 8 and printed['datasets']['train']['max_rotation'] == 1.0  # BSRT's
    assert printed['train']['optim_g']['betas'] == [0.9, 0.99]  # the file's
    assert printed['train']['optim_g']['eps'] == 1e-8  # and Adam's constructor defaults
    assert not (tmp_path / 'experiments').exists()
    assert validate_options(printed, 'printed.yml') is not None  # the output is a valid option file itself


def test_dry_run_trains_one_step_and_writes_nothing(tmp_path, sample_data, one_thread):
    import torch
    opt = tiny_options(tmp_path, sample_data, name='dry')
    path = write_options(tmp_path / 'dry.yml', opt)
    model = train_pipeline(tmp_path, ['-opt', str(path), '--dry-run'])
    assert model is not None and not (tmp_path / 'experiments').exists()
    assert len(model.optimizer.state) > 0  # one optimiser step was taken
    weights = tmp_path / 'w.pth'
    torch.save({'params': model.bare_net.state_dict()}, weights)
    test_opt = {'name': 'dry_test', 'model_type': 'BurstSRModel', 'num_gpu': 0, 'network_g': opt['network_g'],
                'datasets': {'test_1': opt['datasets']['val']}, 'path': {'pretrain_network_g': str(weights)},
                'val': {'metrics': opt['val']['metrics']}}
    assert run_test_pipeline(tmp_path, ['-opt', str(write_options(tmp_path / 't.yml', test_opt)), '--dry-run']) == {}
    assert not (tmp_path / 'results').exists()


def test_root_scripts_help_and_errors(tmp_path):
    env_cwd = tmp_path
    helps = {}
    for script in ('train.py', 'test.py', 'tune.py', 'infer.py'):
        res = subprocess.run([sys.executable, str(ROOT / script), '--help'], capture_output=True, text=True,
                             cwd=env_cwd, timeout=300)
        assert res.returncode == 0, res.stderr
        helps[script] = res.stdout
        assert '--print-options' in res.stdout and '--dry-run' in res.stdout and '--set' in res.stdout
    assert '--auto_resume' in helps['train.py'] and '--auto_resume' not in helps['test.py']
    assert '--debug' not in helps['test.py'] and 'Evaluate a checkpoint' in helps['test.py']
    path = write_options(tmp_path / 'no_weights.yml', demo_options(tmp_path, S))
    res = subprocess.run([sys.executable, str(ROOT / 'test.py'), '-opt', str(path)],
                         capture_output=True, text=True, cwd=env_cwd, timeout=300)
    assert res.returncode == 2 and 'Traceback' not in res.stderr
    assert "test.py: error: " in res.stderr and "option 'path.pretrain_network_g'" in res.stderr


def test_real_bugs_keep_their_traceback():
    def bug():
        raise ZeroDivisionError('a bug')
    with pytest.raises(ZeroDivisionError):
        run_cli(bug, 'train.py')


def test_every_entry_point_prepares_the_sample_data_its_file_names(tmp_path, monkeypatch, capsys):
    import codes.scripts.sample_data as sd
    from codes.tune import tune_pipeline
    calls = []
    monkeypatch.setattr(sd, 'prepare_sample_data', lambda out, blind=False: calls.append((out, blind)))
    opt = {**demo_options(tmp_path, D), 'prepare_blind_sample_data': str(tmp_path / 'blind'),
           'search_space': {'train.optim_g.lr': {'low': 1e-4, 'high': 1e-3, 'log': True}},
           'tune': {'max_iters': 2, 'n_trials': 1}}
    path = write_options(tmp_path / 'tune.yml', opt)
    assert tune_pipeline(tmp_path, ['-opt', str(path), '--print-options']) is None
    assert calls == [(str(tmp_path / 'blind'), True)]  # the blind-SR sample, as train.py prepares it
    printed = list(yaml.safe_load_all(capsys.readouterr().out.replace('\ntrial:', '\n---\ntrial:')))
    assert printed[0]['tune']['pruner']['type'] == 'none' and printed[1]['trial']['train']['total_iter'] == 2
