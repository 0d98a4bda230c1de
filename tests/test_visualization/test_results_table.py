"""The results table of many test.py runs: one real test.py run of a tiny BSRT and three metrics.json files of the
same schema (Burstormer synthetic, BSRT-L on BurstSR val, DCLS ×4 on Set5), as Markdown and in headless Chromium.

The browser test is skipped, with the reason, when Chromium, chromedriver or selenium is missing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from codes.archs import build_network
from codes.metrics.published import network_variant
from codes.scripts.results_table import main as table_main
from codes.test import test_pipeline as run_test_pipeline
from codes.utils.errors import run_cli
from codes.visualization.results_table import NONE, build_table, collect_result_dirs, write_html
from tests.test_runner.tiny import TINY_NET
from tests.test_visualization.test_report_browser import browser  # noqa: F401  (the Chromium fixture)

pytestmark = pytest.mark.usefixtures('one_thread')

ROOT = Path(__file__).resolve().parents[2]
BURST_METRICS = {'psnr': {'type': 'calculate_psnr_linear', 'crop_border': 40},
                 'ssim': {'type': 'calculate_ssim_linear', 'crop_border': 40}}


def _synthetic_run(root: Path, name: str, dataset: str, net: dict, params: int, model_type: str,
                   mean: dict, metric_options: dict) -> Path:
    """A metrics.json of the schema test.py writes, without running the network."""
    out = root / name / dataset
    out.mkdir(parents=True)
    net_opt = {k: v for k, v in net.items() if k != 'type'}
    record = {'dataset': dataset, 'checkpoint': f'{name}.pth', 'precision': 'fp32',
              'mean': {**mean, 'num_samples': 3}, 'per_image': [{'key': '0000', **mean}],
              'model_type': model_type, 'dataset_type': 'X',
              'network': {'type': net['type'], 'options': net_opt, 'parameters': params},
              'metric_options': metric_options}
    (out / 'metrics.json').write_text(json.dumps(record))
    return out


@pytest.fixture(scope='module')
def runs(tmp_path_factory, sample_data, one_thread) -> dict[str, Path]:
    """``tiny``: test.py on the sample SyntheticBurstVal (named SyntheticBurstVal) with a random tiny BSRT; the
    others synthesized."""
    root = tmp_path_factory.mktemp('results')
    torch.manual_seed(0)
    weights = root / 'tiny.pth'
    torch.save(build_network(TINY_NET).state_dict(), weights)
    opt = {'name': 'tiny_bsrt', 'model_type': 'BurstSRModel', 'num_gpu': 0,
           'datasets': {'test_1': {'name': 'SyntheticBurstVal', 'type': 'SyntheticBurstValDataset',
                                   'dataroot': str(sample_data / 'SyntheticBurstVal'), 'burst_size': 2,
                                   'num_worker_per_gpu': 0}},
           'network_g': dict(TINY_NET),
           'path': {'pretrain_network_g': str(weights), 'results_root': str(root / 'tiny_bsrt')},
           'val': {'save_img': False, 'save_submission': False, 'pbar': False, 'metrics': BURST_METRICS}}
    opt_file = root / 'tiny.yml'
    opt_file.write_text(json.dumps(opt))  # JSON is YAML
    run_test_pipeline(ROOT, ['-opt', str(opt_file)])
    return {
        'tiny': root / 'tiny_bsrt' / 'SyntheticBurstVal',
        'burstormer': _synthetic_run(root, 'burstormer_syn', 'SyntheticBurstVal',
                                     {'type': 'Burstormer', 'track': 'synthetic'}, 2488386, 'BurstSRModel',
                                     {'psnr': 42.5, 'ssim': 0.97}, BURST_METRICS),
        'bsrt_l': _synthetic_run(root, 'bsrt_l_real', 'BurstSR_val', {'type': 'BSRT', 'level': 'L'}, 20713905,
                                 'RealBurstSRModel', {'psnr': 48.3, 'ssim': 0.98},
                                 {'psnr': {'type': 'calculate_aligned_psnr', 'crop_border': 40},
                                  'ssim': {'type': 'calculate_ssim_linear', 'crop_border': 40}}),
        'dcls': _synthetic_run(root, 'dcls_x4', 'Set5', {'type': 'DCLS', 'scale': 4, 'kernel_size': 21}, 13626187,
                               'BlindSRModel', {'psnr': 31.9, 'psnr_rgb': 30.1},
                               {'psnr': {'type': 'calculate_psnr_matlab', 'crop_border': 4, 'test_y_channel': True},
                                'psnr_rgb': {'type': 'calculate_psnr_matlab', 'crop_border': 4,
                                             'test_y_channel': False}}),
    }


def _md_rows(text: str) -> dict[str, dict[str, str]]:
    """The Markdown table's rows by run, each ``{column title: cell}``."""
    lines = [ln for ln in text.splitlines() if ln.startswith('|')]
    head = [c.strip() for c in lines[0].strip('|').split('|')]
    assert set(lines[1].strip('|').split('|')) <= {'---', '---:'}
    rows = [dict(zip(head, (c.strip() for c in ln.strip('|').split('|')))) for ln in lines[2:]]
    return {r['run']: r for r in rows}


def test_test_py_records_the_network(runs):
    record = json.loads((runs['tiny'] / 'metrics.json').read_text())
    net = build_network(TINY_NET)
    assert record['network'] == {'type': 'BSRT', 'options': {k: v for k, v in TINY_NET.items() if k != 'type'},
                                 'parameters': sum(p.numel() for p in net.parameters())}
    assert record['model_type'] == 'BurstSRModel' and record['dataset_type'] == 'SyntheticBurstValDataset'
    assert record['metric_options']['psnr']['type'] == 'calculate_psnr_linear'
    assert isinstance(record['mean']['psnr'], float) and record['per_image']  # the older keys are still there


def test_markdown_table_of_four_runs(runs, tmp_path, capsys):
    pattern = str(runs['tiny'].parents[1] / '*' / '*')  # expanded by the command, like a quoted shell glob
    md, page = table_main([pattern, '--out', str(tmp_path / 'zoo'), '--no-macs'])
    assert (md, page) == (str(tmp_path / 'zoo.md'), str(tmp_path / 'zoo.html'))
    assert capsys.readouterr().out.split() == [md, page]
    text = Path(md).read_text()
    rows = _md_rows(text)
    assert set(rows) == {'tiny_bsrt/SyntheticBurstVal', 'burstormer_syn/SyntheticBurstVal',
                         'bsrt_l_real/BurstSR_val', 'dcls_x4/Set5'}
    tiny = rows['tiny_bsrt/SyntheticBurstVal']
    record = json.loads((runs['tiny'] / 'metrics.json').read_text())
    assert tiny['network'] == 'BSRT (own options)' and tiny['dataset'] == 'SyntheticBurstVal'
    assert tiny['parameters'] == f"{record['network']['parameters']:,}"
    assert tiny['psnr'] == f"{record['mean']['psnr']:.4f}" and tiny['ssim'] == f"{record['mean']['ssim']:.4f}"
    assert tiny['psnr published'] == NONE  # not the published network
    assert 'baseline_psnr' in tiny and 'baseline_psnr published' not in tiny  # a baseline, not a configured metric
    assert tiny['GMACs (14×48×48 burst)'] == NONE  # --no-macs
    burstormer = rows['burstormer_syn/SyntheticBurstVal']
    assert burstormer['network'] == 'Burstormer, synthetic' and burstormer['parameters'] == '2,488,386'
    assert burstormer['psnr'] == '42.5000' and burstormer['psnr published'].startswith('42.83 [')
    assert burstormer['ssim published'].startswith('0.973 [')
    bsrt_l = rows['bsrt_l_real/BurstSR_val']
    assert bsrt_l['network'] == 'BSRT-L'
    assert bsrt_l['psnr published'].startswith('48.57 [') and bsrt_l['ssim published'].startswith('0.986 [')
    dcls = rows['dcls_x4/Set5']
    assert dcls['network'] == 'DCLS ×4, setting 1' and dcls['psnr published'].startswith('32.12 [')
    assert dcls['psnr_rgb'] == '30.1000' and dcls['psnr_rgb published'] == NONE  # RGB: no published figure
    assert dcls['ssim'] == NONE and burstormer['psnr_rgb'] == NONE  # metrics a run did not compute
    # every published cell names its numbered source below the table
    n = int(bsrt_l['psnr published'].split('[')[1].rstrip(']'))
    assert f'{n}. Luo et al., "BSRT' in text and 'CVPR Workshops 2022' in text
    n = int(dcls['psnr published'].split('[')[1].rstrip(']'))
    assert f'{n}. Luo et al., "Deep Constrained Least Squares' in text and 'Table 1' in text


def test_macs_per_burst_counted_for_burst_networks_only(runs, tmp_path):
    unknown = _synthetic_run(tmp_path, 'unknown', 'SyntheticBurstVal', {'type': 'NoSuchNet'}, 10, 'BurstSRModel',
                             {'psnr': 30.0, 'ssim': float('nan')}, BURST_METRICS)  # a diverged run's NaN
    table = build_table([runs['burstormer'], runs['dcls'], unknown])
    burstormer, dcls, unknown_row = table.rows
    assert burstormer['text']['gmacs'] == '39.0'  # the README's burst-model table, benchmarks/burst_models.py
    assert dcls['text']['gmacs'] == NONE  # a single-image network: no burst cost
    # a network this installation cannot build: the cell is empty and a note says why
    assert unknown_row['text']['gmacs'] == NONE and unknown_row['text']['network'] == 'NoSuchNet (own options)'
    assert any(n.startswith('NoSuchNet: MACs not counted') for n in table.notes)
    assert unknown_row['text']['ssim'] == 'nan' and unknown_row['values']['ssim'] is None
    assert 'nan' in write_html(table, tmp_path / 'nan.html').read_text()  # still valid JSON in the page


def test_network_variants():
    assert network_variant('BSRT', {'level': 'S'}) == 'BSRT-S'
    assert network_variant('BSRT', {}) == 'BSRT-S'  # the constructor's default level
    assert network_variant('BSRT', {'level': 'S', 'embed_dim': 16}) is None  # own dimensions
    assert network_variant('BSRT', {'level': 'L', 'burst_size': 8}) is None  # published: 14 frames
    assert network_variant('Burstormer', {'track': 'real'}) == 'Burstormer, real'
    assert network_variant('DCLS', {'scale': 2, 'kernel_size': 11}) == 'DCLS ×2, setting 2'
    assert network_variant('DCLS', {'scale': 3, 'kernel_size': 11}) is None
    assert network_variant('BIPNet', {}) == 'BIPNet'  # matched by type even before the network is registered


def _cli_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: table_main(argv), 'results_table')
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('results_table: error: ')
    return err


def test_bad_input_is_one_line_naming_the_path(runs, tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert f'{empty}: no metrics.json' in _cli_error([str(runs['tiny']), str(empty)], capsys)
    bad = tmp_path / 'bad' / 'Set5'
    bad.mkdir(parents=True)
    (bad / 'metrics.json').write_text('{"mean": ')
    assert f"{bad / 'metrics.json'}: not valid JSON" in _cli_error([str(bad)], capsys)
    (bad / 'metrics.json').write_text('{"per_image": [], "network": 3}')
    assert f"{bad / 'metrics.json'}: has no mean values" in _cli_error([str(bad)], capsys)
    pattern = str(tmp_path / 'nothing*' / 'x')
    assert f'{pattern}: the pattern matches no folder' in _cli_error([pattern], capsys)
    assert f"{tmp_path / 'missing'}: no such file or folder" in _cli_error([str(tmp_path / 'missing')], capsys)
    log = next(runs['tiny'].parent.glob('*.log'))  # test.py's log, which the pattern */* of the Markdown test skips
    assert f'{log}: not a result folder' in _cli_error([str(log)], capsys)
    assert not (tmp_path / 'results').exists()


def test_collect_run_folders_and_files(runs, tmp_path):
    run_folder = runs['tiny'].parent
    assert collect_result_dirs([str(run_folder), str(runs['tiny'] / 'metrics.json'), str(runs['dcls'])]) == [
        runs['tiny'], runs['dcls']]  # a run folder gives its datasets; repeats are dropped
    other = tmp_path / 'dcls_x4' / 'Set5'  # the same run and dataset names in another results folder
    other.mkdir(parents=True)
    (other / 'metrics.json').write_text((runs['dcls'] / 'metrics.json').read_text())
    table = build_table([runs['dcls'], other, runs['burstormer']], count_macs=False)
    assert [r['key'] for r in table.rows] == [str(runs['dcls']), str(other), 'burstormer_syn/SyntheticBurstVal']


def _cells(driver, col: str) -> list[str]:
    from selenium.webdriver.common.by import By
    return [td.text for td in driver.find_elements(By.CSS_SELECTOR, f'#body tr.row td[data-col="{col}"]')]


def _keys(driver) -> list[str]:
    from selenium.webdriver.common.by import By
    return [tr.get_attribute('data-key') for tr in driver.find_elements(By.CSS_SELECTOR, '#body tr.row')]


def test_html_table_sorts_in_chromium(browser, runs, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    table = build_table(list(runs.values()), count_macs=False)
    page = write_html(table, tmp_path / 'zoo.html')
    text = page.read_text()
    assert 'http://' not in text and 'https://' not in text and '<link' not in text  # self-contained, offline
    assert '<script src' not in text
    browser.get(page.as_uri())
    end = time.time() + 20
    while len(_keys(browser)) < len(runs):
        assert time.time() < end, 'the table did not render'
        time.sleep(0.05)
    by_key = {r['key']: r for r in table.rows}
    assert _keys(browser) == [r['key'] for r in table.rows]  # the command-line order first
    for key, psnr, pub, net in zip(_keys(browser), _cells(browser, 'psnr'), _cells(browser, 'pub:psnr'),
                                   _cells(browser, 'network')):
        assert (psnr, pub, net) == (by_key[key]['text']['psnr'], by_key[key]['text']['pub:psnr'],
                                    by_key[key]['text']['network'])
    psnr = {k: r['values']['psnr'] for k, r in by_key.items()}
    header = browser.find_element(By.CSS_SELECTOR, 'th[data-col="psnr"]')
    header.click()  # numbers: largest first
    assert _keys(browser) == sorted(psnr, key=lambda k: -psnr[k])
    assert 'sorted-desc' in header.get_attribute('class')
    header.click()
    assert _keys(browser) == sorted(psnr, key=lambda k: psnr[k])
    # published figures: the tiny run has none and stays last in both directions
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="pub:psnr"]').click()
    assert _keys(browser) == ['bsrt_l_real/BurstSR_val', 'burstormer_syn/SyntheticBurstVal', 'dcls_x4/Set5',
                              'tiny_bsrt/SyntheticBurstVal']
    assert _cells(browser, 'pub:psnr')[-1] == NONE
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="pub:psnr"]').click()
    assert _keys(browser)[-1] == 'tiny_bsrt/SyntheticBurstVal'
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="network"]').click()  # text: A to Z
    assert _cells(browser, 'network') == sorted(_cells(browser, 'network'))
    cell = browser.find_element(By.CSS_SELECTOR, 'tr[data-key="dcls_x4/Set5"] td[data-col="pub:psnr"]')
    assert 'Deep Constrained Least Squares' in cell.get_attribute('title')  # the source on hover
