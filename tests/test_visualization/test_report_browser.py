"""The HTML report and the two-run comparison, opened in headless Chromium (selenium + Debian's chromedriver).

Skipped, with the reason, when Chromium, chromedriver or selenium is missing (``.ci/run`` installs them).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from codes.scripts.compare_results import main as compare_main
from codes.visualization.report import ReportError, write_report

N_IMAGES = 12
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMEDRIVER = shutil.which('chromedriver')


def _result_folder(root: Path, name: str, shift: float, seed: int) -> Path:
    """A test.py-like result folder: metrics.json and the visualization views of N_IMAGES small images."""
    from skimage import data as skd
    out = root / name / 'SynVal'
    vis = out / 'visualization'
    vis.mkdir(parents=True)
    photo = skd.astronaut()
    rng = np.random.default_rng(seed)
    per_image = []
    for i in range(N_IMAGES):
        key = f'{i:04d}'
        gt = photo[20 * i % 400:20 * i % 400 + 96, 30 * i % 300:30 * i % 300 + 128]
        pred = np.clip(gt.astype(np.int16) + rng.integers(-20, 20, gt.shape), 0, 255).astype(np.uint8)
        inp = cv2.resize(cv2.resize(gt, (32, 24), interpolation=cv2.INTER_AREA), (128, 96))
        for suffix, img in (('', pred), ('_input', inp), ('_gt', gt), ('_panel', np.hstack([inp, pred, gt]))):
            cv2.imwrite(str(vis / f'{key}{suffix}.png'), img[..., ::-1])
        per_image.append({'key': key, 'psnr': float(25 + shift + rng.random() * 5), 'ssim': float(rng.random()),
                          'baseline_psnr': 24.0 + i / 10})
    mean = {k: float(np.mean([r[k] for r in per_image])) for k in ('psnr', 'ssim', 'baseline_psnr')}
    (out / 'metrics.json').write_text(json.dumps({'dataset': 'SynVal', 'checkpoint': 'net.pth', 'precision': 'fp32',
                                                  'mean': {**mean, 'num_samples': N_IMAGES}, 'per_image': per_image}))
    return out


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip('Chromium or chromedriver is not installed (apt-get install chromium chromium-driver); '
                    'the report is not checked in a browser')
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed (pip install selenium)')
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run', '--window-size=1280,900',
                 f'--user-data-dir={tmp_path_factory.mktemp("chromium-profile")}'):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _column(driver, col: str) -> list[str]:
    from selenium.webdriver.common.by import By
    return [td.text for td in driver.find_elements(By.CSS_SELECTOR, f'#body tr.row td.metric[data-col="{col}"]')]


def _keys(driver) -> list[str]:
    from selenium.webdriver.common.by import By
    return [tr.get_attribute('data-key') for tr in driver.find_elements(By.CSS_SELECTOR, '#body tr.row')]


def _wait(predicate, timeout: float = 20.0) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise AssertionError('timed out waiting for the page')
        time.sleep(0.05)


def test_report_table_sort_viewer_and_screenshot(browser, tmp_path):
    from selenium.webdriver.common.by import By
    out = _result_folder(tmp_path, 'runA', 0.0, 1)
    page = write_report(out)
    assert page == out / 'index.html' and len(list((out / 'thumbs').glob('*.jpg'))) == N_IMAGES
    assert max(cv2.imread(str(out / 'thumbs' / '0000.jpg')).shape[:2]) == 128  # small files
    text = page.read_text()
    assert 'http://' not in text and 'https://' not in text and '<link' not in text  # self-contained, offline
    record = json.loads((out / 'metrics.json').read_text())
    browser.get(page.as_uri())
    _wait(lambda: len(_keys(browser)) == N_IMAGES)
    by_key = {r['key']: r for r in record['per_image']}
    for key, psnr, ssim in zip(_keys(browser), _column(browser, 'psnr'), _column(browser, 'ssim')):
        assert psnr == f"{by_key[key]['psnr']:.4f}" and ssim == f"{by_key[key]['ssim']:.4f}"
    assert set(_keys(browser)) == set(by_key)
    summary = browser.find_element(By.ID, 'summary').text
    assert f"{record['mean']['psnr']:.4f}" in summary and 'net.pth' in summary
    # sorting by PSNR: the default is descending, a click makes it ascending
    header = browser.find_element(By.CSS_SELECTOR, 'th[data-col="psnr"]')
    desc = sorted(by_key, key=lambda k: -by_key[k]['psnr'])
    assert _keys(browser) == desc
    header.click()
    assert _keys(browser) == desc[::-1] and 'sorted-asc' in header.get_attribute('class')
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="key"]').click()
    assert _keys(browser) == sorted(by_key)
    # a comparison view opens with input, prediction and ground truth at full resolution
    browser.find_element(By.CSS_SELECTOR, '#body tr.row[data-key="0003"]').click()
    assert browser.find_element(By.ID, 'viewer').is_displayed()
    assert browser.find_element(By.ID, 'vtitle').text == '0003'
    imgs = browser.find_elements(By.CSS_SELECTOR, '#vpanes .pane img')
    assert [Path(i.get_attribute('src')).name for i in imgs] == ['0003_input.png', '0003.png', '0003_gt.png']
    _wait(lambda: browser.execute_script(
        "return Array.from(document.querySelectorAll('.pane img')).every(i => i.complete && i.naturalWidth > 0)"))
    assert browser.execute_script("return Array.from(document.querySelectorAll('.pane img'))"
                                  ".map(i => i.naturalWidth)") == [128, 128, 128]
    assert browser.find_element(By.ID, 'vzoom').text == '100 %'
    # zoom on one pane: every pane follows
    browser.execute_script("document.querySelector('.pane').dispatchEvent(new WheelEvent('wheel', "
                           "{deltaY: -400, clientX: 100, clientY: 200, bubbles: true, cancelable: true}))")
    transforms = browser.execute_script("return Array.from(document.querySelectorAll('.pane img'))"
                                        ".map(i => i.style.transform)")
    assert len(set(transforms)) == 1 and 'scale(1)' not in transforms[0]
    assert browser.find_element(By.ID, 'vzoom').text != '100 %'
    shot = cv2.imdecode(np.frombuffer(browser.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)
    assert shot.shape[0] > 400 and shot.std() > 10  # not blank
    cv2.imwrite(str(tmp_path / 'viewer.png'), shot)
    browser.find_element(By.ID, 'vnext').click()
    assert browser.find_element(By.ID, 'vtitle').text == '0004'  # the next row in table order
    browser.find_element(By.ID, 'vclose').click()
    assert not browser.find_element(By.ID, 'viewer').is_displayed()


def test_comparison_page_per_image_differences(browser, tmp_path):
    from selenium.webdriver.common.by import By
    a, b = _result_folder(tmp_path, 'small', 0.0, 1), _result_folder(tmp_path, 'large', 1.0, 2)
    page = Path(compare_main([str(a), str(b)]))
    assert page == tmp_path / 'compare_small_vs_large_SynVal.html'
    ra = {r['key']: r for r in json.loads((a / 'metrics.json').read_text())['per_image']}
    rb = {r['key']: r for r in json.loads((b / 'metrics.json').read_text())['per_image']}
    browser.get(page.as_uri())
    _wait(lambda: len(_keys(browser)) == N_IMAGES)
    diffs = {k: rb[k]['psnr'] - ra[k]['psnr'] for k in ra}
    assert _keys(browser) == sorted(diffs, key=lambda k: -diffs[k])  # largest gain of B first
    for key, d in zip(_keys(browser), _column(browser, 'd:psnr')):
        assert float(d) == pytest.approx(diffs[key], abs=1e-4)
    browser.find_element(By.CSS_SELECTOR, '#body tr.row').click()
    names = [p.text for p in browser.find_elements(By.CSS_SELECTOR, '#vpanes .plabel')]
    assert names == ['input', 'A: small', 'B: large', 'ground truth']
    srcs = [i.get_attribute('src') for i in browser.find_elements(By.CSS_SELECTOR, '#vpanes .pane img')]
    assert '/small/' in srcs[1] and '/large/' in srcs[2]


def test_report_refuses_a_folder_without_metrics(tmp_path):
    with pytest.raises(ReportError, match='no metrics.json'):
        write_report(tmp_path)
