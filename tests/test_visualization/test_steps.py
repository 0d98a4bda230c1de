"""The named steps of the comparison page, the comparison panel and the metric curves."""
import numpy as np
import pytest

from codes.visualization import panels, plots, report


def test_comparison_columns_give_baselines_one_column_and_metrics_three():
    cols = report._comparison_columns(['psnr', 'baseline_psnr'])
    assert [c['id'] for c in cols] == ['d:psnr', 'a:psnr', 'b:psnr', 'a:baseline_psnr']
    assert cols[0]['delta'] and cols[3]['baseline'] and cols[0]['title'] == 'Δ psnr (B − A)'


def test_comparison_summary_counts_the_images_b_wins():
    rows = [{'values': {'d:psnr': 0.5}}, {'values': {'d:psnr': -0.1}}, {'values': {'d:psnr': None}}]
    html = report._comparison_summary(('a', 'b'), ('A', 'B'), ({'mean': {'psnr': 30.0}}, {'mean': {'psnr': 30.25}}),
                                      ['psnr'], rows, (['k1'], []))
    assert '<td>+0.2500</td>' in html and '1 of 2 images (psnr)' in html
    assert 'images compared</th><td colspan="3">3<' in html and 'only in A: k1' in html


def test_place_crop_chooses_the_largest_error_and_checks_a_given_crop():
    err = np.zeros((20, 20), np.float32)
    err[12:16, 2:6] = 1
    views = [panels.View('a', np.zeros((20, 20, 3), np.uint8))]
    assert panels._place_crop(views, err, None, 4, 0, (20, 20)) == (12, 2)
    assert panels._place_crop(views, None, None, 4, 0, (20, 20)) == (8, 8)  # one view, no ground truth: centre
    with pytest.raises(ValueError, match=r'crop \(18, 0\) of size 4 does not fit a 20x20 image'):
        panels._place_crop(views, err, (18, 0), 4, 0, (20, 20))


def test_full_and_crop_tiles_label_the_view_and_leave_its_image_alone():
    img = np.full((16, 16, 3), 100, np.uint8)
    view, gt = panels.View('pred', img, value=31.5, metric='PSNR'), panels.View('gt', img.copy())
    name, label, tile = panels._full_tile(view, gt, (4, 4, 8), 2)
    assert name == 'pred' and label[0] == 'pred (shown x2)' and tile.shape == (32, 32, 3)
    assert (img == 100).all() and (tile != 100).any()  # the box is drawn into a copy
    name, lines, crop = panels._crop_tile(gt, gt, (4, 4, 8), 3)
    assert name == 'gt crop' and lines == ['gt crop x3', '(4, 4) 8x8 px'] and crop.shape == (24, 24, 3)


def test_plot_steps_use_a_log_scale_only_for_positive_values():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2)
    plots._plot_lr(a, [{'iter': 1, 'lr': 1e-3}, {'iter': 2, 'lr': 1e-4}])
    plots._plot_losses(b, [{'iter': 1, 'l_pix': 0.5}, {'iter': 2, 'l_pix': -0.1}], ['l_pix'])
    assert a.get_yscale() == 'log' and a.get_title() == 'learning rate'
    assert b.get_yscale() == 'linear' and b.get_legend_handles_labels()[1] == ['l_pix']
    plt.close(fig)
