"""tune.py: search-space checks, a SQLite study of a tiny BSRT, failing trials, resume, best.yml, and two workers
sharing one study in SQLite and in a real PostgreSQL server started by the test (CPU)."""
import csv
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from codes.train import train_pipeline
from codes.utils.options import OptionError, fill_defaults, load_yaml, parse_options, validate_options
from tests.test_runner.tiny import tiny_options, write_options

optuna = pytest.importorskip('optuna')
from codes.tune import TUNE_SCHEMA, parse_search_space, tune_pipeline  # noqa: E402
from codes.tune.study import make_pruner  # noqa: E402
from codes.tune.trial_runner import failure_reason, run_trial_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def tune_file(tmp: Path, sample: Path, name: str, search_space: dict, tune: dict, val_freq: int = 2, **train) -> Path:
    """A tune option file over the tiny BSRT: 256-pixel crops of the sample photos, one validation burst."""
    opt = tiny_options(tmp, sample, name=name, total_iter=2, **train)  # the full run of best.yml
    opt['datasets']['val'] = {'type': 'SyntheticBurstDataset', 'dataroot': str(sample / 'zurich'), 'burst_size': 2,
                              'crop_size': 256, 'seed': 11}  # fixed seed: the same bursts at every validation
    opt['val'].update(val_freq=val_freq, save_img=False)
    opt['search_space'] = search_space
    # a preloaded forkserver starts a trial without re-importing torch, and (unlike fork) cannot inherit a busy
    # OpenMP pool from the test process
    opt['tune'] = {'max_iters': 1, 'limit_val_batches': 1, 'heartbeat_interval': 5, 'start_method': 'forkserver',
                   **tune}
    return write_options(tmp / f'{name}.yml', opt)


def load_study(tmp: Path, name: str, storage: str | None = None):
    url = storage or f"sqlite:///{tmp / 'experiments' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=url)


def states(study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials()}


# ------------------------------------------------------------------------------------------ up-front checks
def test_search_space_forms():
    params = {p.key: p for p in parse_search_space({
        'train.optim_g.lr': {'low': 1e-5, 'high': 1e-3, 'log': True},
        'train.total_iter': {'low': 10, 'high': 50, 'step': 10},
        'network_g.mlp_ratio': [2, 4],
        'train.scheduler.milestones': [[10], [10, 20]],
        'train.scheduler.type': {'choices': {'MultiStepLR': {'milestones': [5]}, 'CosineAnnealingLR': {'T_max': 9}}},
    }, 'f.yml')}
    assert params['train.optim_g.lr'].kind == 'float' and params['train.optim_g.lr'].log
    assert params['train.total_iter'].kind == 'int' and params['train.total_iter'].step == 10
    assert params['network_g.mlp_ratio'].labels == (2, 4)
    milestones = params['train.scheduler.milestones']
    assert milestones.labels == ('[10]', '[10, 20]') and milestones.decode('[10, 20]') == [10, 20]
    sched = params['train.scheduler.type']
    assert sched.per_choice and sched.decode('CosineAnnealingLR') == {'type': 'CosineAnnealingLR', 'T_max': 9}
    for spec, match in [({'low': 1}, 'expected a list of choices'), ({'low': 0.0, 'high': 1.0, 'log': True}, 'low > 0'),
                        ({'low': 2.0, 'high': 1.0}, 'above high'), ([], 'no choices'),
                        ({'low': 1.0, 'high': 2.0, 'scale': 3}, 'unknown key')]:
        with pytest.raises(OptionError, match=rf"f\.yml: option 'search_space\.train\.x.*{match}"):
            parse_search_space({'train.x': spec}, 'f.yml')
    with pytest.raises(OptionError, match='for a ".type" key'):
        parse_search_space({'train.optim_g.lr': {'choices': {'a': {}}}}, 'f.yml')


@pytest.mark.parametrize('value,ok', [(0.25, True), (1.0, True), (3, True), (0.0, False), (1.5, False), (0, False),
                                      ('half', False), (True, False)])
def test_limit_batches_options(tmp_path, sample_data, value, ok):
    opt = tiny_options(tmp_path, sample_data)
    opt['train']['limit_train_batches'] = value
    opt['val']['limit_val_batches'] = value
    if ok:
        checked = validate_options(opt, 'f.yml')
        assert checked['train']['limit_train_batches'] == value
        assert type(checked['val']['limit_val_batches']) is type(value)  # 1.0 stays a fraction, 3 a count
    else:
        with pytest.raises(OptionError, match=r"f\.yml: option 'train\.limit_train_batches': expected a fraction"):
            validate_options(opt, 'f.yml')


@pytest.mark.parametrize('space,tune,match', [
    ({'train.optim_g.lrr': [1e-3]}, {}, r"option 'search_space\.train\.optim_g\.lrr'.*unknown key for Adam.*'lr'"),
    ({'network_g.mlp_ratios': [2, 4]}, {}, r"option 'search_space\.network_g\.mlp_ratios'.*unknown key for BSRT"),
    ({'train.precision': ['fp32', 'fp64']}, {}, r"search_space\.train\.precision'.*'fp64' is not valid"),
    ({'train.scheduler.type': ['MultiStepLR', 'CosineAnnealingLR']}, {},
     r"search_space\.train\.scheduler\.type'.*'CosineAnnealingLR' is not valid here \(at train\.scheduler\."),
    ({'trian.total_iter': [2]}, {}, r"search_space\.trian\.total_iter'.*unknown key"),
    ({'train.optim_g.lr': [1e-3]}, {'metric': 'lpips'}, r"option 'tune\.metric'.*val\.metrics has: psnr, ssim"),
    ({'train.optim_g.lr': [1e-3]}, {'pruner': {'type': 'median', 'min_resource': 2}},
     r"tune\.pruner\.min_resource'.*does not apply to the median pruner"),
    ({'train.optim_g.lr': [1e-3]}, {'samplr': {}}, r"option 'tune\.samplr': unknown key"),
    ({'train.optim_g.lr': [1e-3]}, {'enqueue': [{'train.optim_g.lr': 5e-3}]},
     r"tune\.enqueue\[0\]\.train\.optim_g\.lr'.*not one of the choices"),
])
def test_bad_search_space_or_tune_block_is_refused_up_front(tmp_path, sample_data, space, tune, match):
    path = tune_file(tmp_path, sample_data, 'bad', space, tune)
    with pytest.raises(OptionError, match=rf'{path}: .*{match}'):
        tune_pipeline(ROOT, ['-opt', str(path)])
    assert not (tmp_path / 'experiments' / 'bad').exists()  # refused before any database or training


def test_shipped_tune_file_is_valid(tmp_path, sample_data):
    """options/tune_synthetic.yml passes every up-front check (data redirected to the session's sample data)."""
    sets = [f'prepare_sample_data={sample_data}', f"datasets.train.dataroot={sample_data / 'zurich'}",
            f"datasets.val.dataroot={sample_data / 'SyntheticBurstVal'}",
            f"path.experiments_root={tmp_path / 'experiments' / 'tune_synthetic'}",
            'search_space.train.optim_g.weight_decay=[0.0, 1.0e-4]']  # a search_space entry added from the CLI
    study = tune_pipeline(ROOT, ['-opt', str(ROOT / 'options' / 'tune_synthetic.yml'), '--n-trials', '0',
                                 '--force_yml', *sets])
    assert study.study_name == 'tune_synthetic' and study.direction.name == 'MAXIMIZE'
    assert (tmp_path / 'experiments' / 'tune_synthetic' / 'study.db').is_file()
    with pytest.raises(OptionError, match=r"search_space\.train\.optim_g\.weight_decay'.*expected a number"):
        tune_pipeline(ROOT, ['-opt', str(ROOT / 'options' / 'tune_synthetic.yml'), '--n-trials', '0',
                             '--force_yml', *sets[:-1], 'search_space.train.optim_g.weight_decay=[none_of_these]'])


@pytest.mark.parametrize('url,match', [('not a url', 'is not a database URL'),
                                       ('postgresql+psycopg2://me:secret@127.0.0.1:1/db',
                                        r'cannot open the study database postgresql\+psycopg2://me:\*\*\*@127')])
def test_unreachable_or_bad_storage_is_a_clear_error(tmp_path, sample_data, url, match):
    path = tune_file(tmp_path, sample_data, 'store', {'train.optim_g.lr': [1e-3]}, {'n_trials': 1})
    with pytest.raises(OptionError, match=rf"{path}: option 'tune.storage': .*{match}") as info:
        tune_pipeline(ROOT, ['-opt', str(path), '--storage', url])
    assert 'secret' not in str(info.value)


def test_key_under_a_sampled_type_is_checked_against_every_type(tmp_path, sample_data):
    # amsgrad exists for Adam and AdamW; momentum_decay for neither
    ok = tune_file(tmp_path, sample_data, 'ok', {'train.optim_g.type': ['Adam', 'AdamW'],
                                                  'train.optim_g.amsgrad': [True, False]}, {'n_trials': 0})
    tune_pipeline(ROOT, ['-opt', str(ok)])
    bad = tune_file(tmp_path, sample_data, 'bad2', {'train.optim_g.type': ['Adam', 'AdamW'],
                                                     'train.optim_g.momentum_decay': [0.004]}, {'n_trials': 0})
    with pytest.raises(OptionError, match=r"search_space\.train\.optim_g\.momentum_decay'.*unknown key"):
        tune_pipeline(ROOT, ['-opt', str(bad)])


@pytest.mark.parametrize('metric,better,direction,want', [('psnr', None, None, 'MAXIMIZE'),
                                                            ('ssim', None, 'minimize', 'MINIMIZE'),
                                                            ('ssim', 'lower', None, 'MINIMIZE')])
def test_objective_metric_and_direction(tmp_path, sample_data, metric, better, direction, want):
    tune = {'n_trials': 0, 'metric': metric, **({'direction': direction} if direction else {})}
    path = tune_file(tmp_path, sample_data, 'dir', {'train.optim_g.lr': [1e-3]}, tune)
    if better:
        opt = load_yaml(path)
        opt['val']['metrics'][metric]['better'] = better
        write_options(path, opt)
    assert tune_pipeline(ROOT, ['-opt', str(path)]).direction.name == want


def test_pruners_and_failure_reasons():
    import torch
    def cfg(block):  # the tune block as read_study_plan hands it on: the schema's defaults filled in
        return fill_defaults(block, TUNE_SCHEMA, None)

    hyperband = make_pruner(cfg({'pruner': {'type': 'hyperband', 'min_resource': 2, 'reduction_factor': 2}}), 40)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._max_resource == 40
    median = make_pruner(cfg({'pruner': {'type': 'median', 'n_warmup_steps': 3}}), 40)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(cfg({}), 40), optuna.pruners.NopPruner)
    assert failure_reason(torch.cuda.OutOfMemoryError('CUDA out of memory.')).startswith('out of memory')
    assert failure_reason(FloatingPointError('too many')).startswith('non-finite loss')
    assert failure_reason(OptionError('a.b', 'bad')).startswith('invalid sampled combination')


# ------------------------------------------------------------------------------------------ the trial process
def test_spawned_trial_relays_validations_and_stops_when_told(tmp_path, sample_data):
    """The default start method (spawn): the child trains with the limit_*_batches budget, sends each validation
    to the worker and stops as soon as the worker's callback says so (as a pruned trial does)."""
    opt = tiny_options(tmp_path, sample_data, name='child', total_iter=4)
    opt['train']['limit_train_batches'] = 2  # epochs of 2 iterations
    opt['val'].update(val_freq=1, save_img=False, limit_val_batches=1)
    trial_file = write_options(tmp_path / 'child.yml', opt)
    seen = []

    def reporter(current_iter, results):
        seen.append((current_iter, results['val']['num_samples'], results['val']['psnr']))
        return current_iter == 2

    resolved, _ = parse_options(ROOT, True, ['-opt', str(trial_file)])  # the worker resolves, the child trains
    assert run_trial_process(resolved, 'spawn', reporter) is None
    assert [(it, n) for it, n, _ in seen] == [(1, 1), (2, 1)]
    exp = Path(opt['path']['experiments_root'])
    log = ''.join(p.read_text() for p in exp.glob('train_*.log'))
    assert '2 iterations per epoch (of 20, train.limit_train_batches), 4 iterations in all (2 epochs)' in log
    assert 'Stopped at iteration 2 by the validation callback' in log
    assert not list((exp / 'models').glob('*.pth'))  # stopped: no final checkpoint
    assert len((exp / 'metrics.jsonl').read_text().splitlines()) == 2


# ------------------------------------------------------------------------------------------- SQLite studies
def test_three_trial_study_prunes_resumes_and_best_yml_trains(tmp_path, sample_data):
    space = {'train.optim_g.type': ['Adam', 'AdamW'], 'train.optim_g.lr': {'low': 1e-5, 'high': 3e-3, 'log': True},
             'network_g.mlp_ratio': [2, 4],
             'train.scheduler.type': {'choices': {'MultiStepLR': {'milestones': [1], 'gamma': 0.5},
                                                  'CosineAnnealingLR': {'T_max': 2}}}}
    first = {'train.optim_g.type': 'Adam', 'network_g.mlp_ratio': 2, 'train.scheduler.type': 'MultiStepLR'}
    # trial 1 barely moves from the initial weights, so it validates far below trial 0 (13.8 vs 15.7 dB after one
    # iteration) and the median pruner stops it
    enqueue = [{**first, 'train.optim_g.lr': 2e-3}, {**first, 'train.optim_g.lr': 1e-5}]
    path = tune_file(tmp_path, sample_data, 'study3', space,
                     {'n_trials': 3, 'enqueue': enqueue, 'sampler': {'type': 'random', 'seed': 1},
                      'pruner': {'type': 'median', 'n_startup_trials': 1}}, val_freq=1)
    study = tune_pipeline(ROOT, ['-opt', str(path)])
    exp = tmp_path / 'experiments' / 'study3'
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.number for t in trials] == [0, 1, 2]
    assert [t.state.name for t in trials[:2]] == ['COMPLETE', 'PRUNED']
    assert trials[2].state.name in ('COMPLETE', 'PRUNED')
    assert trials[1].user_attrs['pruned_at'] == 1 and trials[1].intermediate_values[1] < trials[0].value
    assert not (exp / 'trial_1' / 'models' / 'net_g_1.pth').exists()  # a pruned run stops without saving
    assert (exp / 'trial_0' / 'models' / 'net_g_1.pth').is_file()
    for t in trials:
        trial_dir = exp / f'trial_{t.number}'
        assert len(list(trial_dir.glob('train_*.log'))) == 1 and list((trial_dir / 'tb_logger').glob('events.*'))
        sampled = load_yaml(trial_dir / 'trial.yml')
        assert sampled['train']['total_iter'] == 1 and sampled['val']['limit_val_batches'] == 1
        assert sampled['train']['optim_g']['lr'] == pytest.approx(t.params['train.optim_g.lr'])
        assert sampled['train']['scheduler']['type'] == t.params['train.scheduler.type']
        assert list(t.intermediate_values) == [1] and t.user_attrs['worker']
    with open(exp / 'trials.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['trial'] for r in rows] == ['0', '1', '2'] and rows[0]['psnr'] and rows[1]['note'].startswith('pruned')
    assert (exp / 'optimization_history.png').is_file()  # one complete trial: no parameter importances yet
    assert (exp / 'trial_0' / 'metrics.png').is_file()  # each trial's curves

    best = study.best_trial
    text = (exp / 'best.yml').read_text()
    assert f'# Best trial {best.number} of study study3' in text
    best_opt = yaml.safe_load(text)
    assert 'search_space' not in best_opt and 'tune' not in best_opt
    assert best_opt['train']['optim_g']['type'] == best.params['train.optim_g.type']
    assert best_opt['train']['optim_g']['lr'] == pytest.approx(best.params['train.optim_g.lr'])
    assert best_opt['network_g']['mlp_ratio'] == best.params['network_g.mlp_ratio']
    assert best_opt['train']['scheduler']['type'] == best.params['train.scheduler.type']
    assert best_opt['train']['total_iter'] == 2 and 'limit_val_batches' not in best_opt['val']  # the full budget
    validate_options(best_opt)

    # re-running resumes: the study already holds 3 trials; asking for 4 runs exactly one more
    assert len(tune_pipeline(ROOT, ['-opt', str(path)]).get_trials()) == 3
    study = tune_pipeline(ROOT, ['-opt', str(path), '--n-trials', '4'])
    assert sorted(states(study)) == [0, 1, 2, 3] and (exp / 'trial_3' / 'trial.yml').is_file()

    # best.yml trains as it is
    model = train_pipeline(ROOT, ['-opt', str(exp / 'best.yml')])
    best_run = tmp_path / 'experiments' / 'study3_best'
    assert (best_run / 'models' / 'net_g_2.pth').is_file() and model.best['val']['psnr']['iter'] == 2


def test_failing_trials_do_not_stop_the_study(tmp_path, sample_data):
    space = {'network_g.num_heads': [2, 5],  # embed_dim 12 is not divisible by 5 heads
             'train.optim_g.lr': [2e-3, 1e30],  # 1e30 diverges: non-finite loss
             'train.scheduler.type': {'choices': {'MultiStepLR': {'milestones': [5]},
                                                  'CosineAnnealingLR': {'T_max': 5}}},
             'train.scheduler.gamma': [0.5]}  # valid for MultiStepLR only: an invalid combination with Cosine
    good = {'network_g.num_heads': 2, 'train.optim_g.lr': 2e-3, 'train.scheduler.type': 'MultiStepLR',
            'train.scheduler.gamma': 0.5}
    enqueue = [{**good, 'train.scheduler.type': 'CosineAnnealingLR'}, {**good, 'network_g.num_heads': 5},
               {**good, 'train.optim_g.lr': 1e30}, good]
    path = tune_file(tmp_path, sample_data, 'fails', space, {'n_trials': 4, 'enqueue': enqueue})
    study = tune_pipeline(ROOT, ['-opt', str(path)])
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.state.name for t in trials] == ['FAIL', 'FAIL', 'FAIL', 'COMPLETE']
    reasons = [t.user_attrs['fail_reason'] for t in trials[:3]]
    assert reasons[0].startswith('invalid sampled combination') and 'train.scheduler.gamma' in reasons[0]
    # a declared constructor check: one line naming the key, found before the trial trains (no traceback)
    assert reasons[1].startswith('invalid sampled combination') and "option 'network_g.embed_dim'" in reasons[1] \
        and 'num_heads 5' in reasons[1], reasons[1]
    # after one step of lr 1e30 the next forward gives torchvision's CPU deform_conv2d NaN offsets, on which it
    # segfaults: the trial's process dies, the worker records it and goes on
    assert reasons[2].startswith(('non-finite loss', 'the trial process died')) or 'diverged' in reasons[2], reasons[2]
    assert study.best_trial.number == 3
    exp = tmp_path / 'experiments' / 'fails'
    with open(exp / 'trials.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['state'] for r in rows] == ['FAIL', 'FAIL', 'FAIL', 'COMPLETE'] and rows[1]['note']


@pytest.mark.filterwarnings('ignore:Heartbeat of storage', 'ignore::optuna.exceptions.ExperimentalWarning')
def test_trial_of_a_dead_worker_is_failed_by_the_next_one(tmp_path, sample_data):
    path = tune_file(tmp_path, sample_data, 'stale', {'train.optim_g.lr': [2e-3]},
                     {'n_trials': 1, 'heartbeat_interval': 1, 'grace_period': 1})
    assert tune_pipeline(ROOT, ['-opt', str(path), '--n-trials', '0']).get_trials() == []
    url = f"sqlite:///{tmp_path / 'experiments' / 'stale' / 'study.db'}"
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.load_study(study_name='stale', storage=storage)
    trial = study.ask()  # a worker takes a trial, beats once, then dies
    trial.set_user_attr('worker', 'deadhost:4242')
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name('stale'), trial.number))
    time.sleep(2.5)
    study = tune_pipeline(ROOT, ['-opt', str(path)])
    assert states(study) == {0: 'FAIL'}  # failed as stale; it counts toward n_trials, so nothing else ran
    reason = study.get_trials()[0].user_attrs['fail_reason']  # and says why
    assert 'the worker deadhost:4242 stopped sending heartbeats' in reason, reason
    assert not (tmp_path / 'experiments' / 'stale' / 'trial_0').exists()


def _run_workers(path: Path, storage: str | None, n_trials: int) -> list[str]:
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    cmd = [sys.executable, str(ROOT / 'tune.py'), '-opt', str(path), '--n-trials', str(n_trials)]
    cmd += ['--storage', storage] if storage else []
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _check_shared_study(study, exp: Path, outs: list[str], n_trials: int) -> None:
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(n_trials))
    assert all(t.state.name == 'COMPLETE' for t in trials), states(study)
    for t in trials:  # each trial trained once, by the worker recorded for it
        assert len(list((exp / f'trial_{t.number}').glob('train_*.log'))) == 1
        pid = t.user_attrs['worker'].rsplit(':', 1)[1]
        logs = [p for p in exp.glob('tune_*.log') if p.stem.endswith(f'_{pid}')]
        assert len(logs) == 1 and f'Trial {t.number} complete' in logs[0].read_text()
    done = [line for out in outs for line in out.splitlines() if ' complete: psnr' in line]
    assert sorted(int(line.split('Trial ')[1].split()[0]) for line in done) == list(range(n_trials))


def test_two_workers_share_a_sqlite_study(tmp_path, sample_data):
    path = tune_file(tmp_path, sample_data, 'shared', {'train.optim_g.lr': {'low': 1e-4, 'high': 3e-3, 'log': True}},
                     {'sampler': {'type': 'random', 'seed': 0}})
    outs = _run_workers(path, None, 3)
    _check_shared_study(load_study(tmp_path, 'shared'), tmp_path / 'experiments' / 'shared', outs, 3)


# ------------------------------------------------------------------------------------------------- PostgreSQL
def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f'/usr/lib/postgresql/*/bin/{name}'))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope='module')
def postgres_url():
    """A throw-away PostgreSQL server on a free local port (as the 'postgres' user when the tests run as root)."""
    initdb, pg_ctl = _pg_bin('initdb'), _pg_bin('pg_ctl')
    if not initdb or not pg_ctl:
        pytest.skip('PostgreSQL server binaries (initdb, pg_ctl) not found: install the postgresql system package '
                    '(apt-get install postgresql; .ci/run does)')
    pytest.importorskip('psycopg2', reason='psycopg2-binary (requirements.txt) is needed for PostgreSQL')
    user = {}
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd
        try:
            pw = pwd.getpwnam('postgres')
        except KeyError:
            pytest.skip('running as root and there is no "postgres" user to run the server as')
        user = {'user': pw.pw_uid, 'group': pw.pw_gid}
    base = Path(tempfile.mkdtemp(prefix='tune_pg_'))
    if user:
        os.chown(base, user['user'], user['group'])
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    data = base / 'data'
    subprocess.run([initdb, '-D', str(data), '-U', 'postgres', '--auth=trust', '-E', 'UTF8'], check=True,
                   capture_output=True, **user)
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([pg_ctl, '-D', str(data), '-o', opts, '-l', str(base / 'server.log'), '-w', 'start'],
                   check=True, capture_output=True, **user)
    try:
        yield f'postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres'
    finally:
        subprocess.run([pg_ctl, '-D', str(data), '-m', 'immediate', 'stop'], capture_output=True, **user)
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(tmp_path, sample_data, postgres_url):
    path = tune_file(tmp_path, sample_data, 'pg', {'train.optim_g.lr': {'low': 1e-4, 'high': 3e-3, 'log': True}},
                     {'sampler': {'type': 'random', 'seed': 0}})
    outs = _run_workers(path, postgres_url, 3)
    exp = tmp_path / 'experiments' / 'pg'
    _check_shared_study(load_study(tmp_path, 'pg', postgres_url), exp, outs, 3)
    assert not (exp / 'study.db').exists() and (exp / 'best.yml').is_file()


# ------------------------------------------------------------------------------------------------- faults
def test_plain_postgresql_url_means_psycopg2_and_a_bad_sqlite_folder_is_clear(tmp_path, sample_data):
    from codes.tune import storage_url
    assert storage_url('postgresql://me:pw@db.example:5432/optuna') == 'postgresql+psycopg2://me:pw@db.example:5432/optuna'
    assert storage_url('postgresql+psycopg://h/db') == 'postgresql+psycopg://h/db'
    assert storage_url('sqlite:///x.db') == 'sqlite:///x.db' and storage_url('not a url') == 'not a url'
    path = tune_file(tmp_path, sample_data, 'faults', {'train.optim_g.lr': [1e-3]}, {'n_trials': 1})
    pytest.importorskip('psycopg2', reason='psycopg2-binary (requirements.txt) is needed for PostgreSQL')
    # the documented URL gets as far as connecting (no server on port 1), not "No module named 'psycopg'"
    with pytest.raises(OptionError, match=r"option 'tune.storage': cannot open the study database "
                       r'postgresql\+psycopg2://me:\*\*\*@127\.0\.0\.1:1/db .*OperationalError') as info:
        tune_pipeline(ROOT, ['-opt', str(path), '--storage', 'postgresql://me:secret@127.0.0.1:1/db'])
    assert 'secret' not in str(info.value) and 'psycopg\'' not in str(info.value)
    a_file = tmp_path / 'passwd'
    a_file.write_text('root:x:0:0')
    with pytest.raises(OptionError, match=rf"option 'tune.storage': cannot create the folder of the SQLite database "
                       rf'{a_file}/x.db .*a file is in the way'):
        tune_pipeline(ROOT, ['-opt', str(path), '--storage', f'sqlite:///{a_file}/x.db'])
    assert a_file.read_text() == 'root:x:0:0'


def test_documented_plain_postgresql_url_opens_a_study(tmp_path, sample_data, postgres_url):
    plain = postgres_url.replace('postgresql+psycopg2://', 'postgresql://')
    path = tune_file(tmp_path, sample_data, 'plainpg', {'train.optim_g.lr': [1e-3]}, {'n_trials': 1})
    study = tune_pipeline(ROOT, ['-opt', str(path), '--storage', plain, '--n-trials', '0'])
    assert study.study_name == 'plainpg' and study.get_trials() == []


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped, counts as dead)."""
    try:
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
@pytest.mark.parametrize('method', ['spawn', 'forkserver'])
def test_trial_process_dies_with_its_killed_worker(tmp_path, method):
    import textwrap
    script = tmp_path / 'worker.py'
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from codes.tune import start_guarded
        if __name__ == '__main__':
            proc, lifeline = start_guarded(multiprocessing.get_context(sys.argv[1]), time.sleep, (600,), 'trial')
            print(proc.pid, flush=True)
            time.sleep(600)
    """))
    worker = subprocess.Popen([sys.executable, str(script), method], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, 'PYTHONPATH': str(ROOT)})
    child = int(worker.stdout.readline())
    time.sleep(1.0)
    assert _alive(child)
    worker.kill()  # kill -9: no handler of the worker runs
    worker.wait()
    deadline = time.time() + 30
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, 'the trial process outlived its worker'
