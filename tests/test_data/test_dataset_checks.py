"""The dataset constructors' argument checks (codes/data/dataset_checks.py) and their messages."""
import pytest

from codes.data.dataset_checks import check_choice, check_min, check_multiple, check_range


def test_check_min():
    check_min('burst_size', 1, 1)
    check_min('border_crop', 0, 0)
    with pytest.raises(ValueError, match=r'^burst_size must be >= 1, got 0$'):
        check_min('burst_size', 0, 1)
    with pytest.raises(ValueError, match=r'^BurstSRDataset: crop_size must be >= 1, got -2$'):
        check_min('crop_size', -2, 1, owner='BurstSRDataset')


def test_check_range():
    check_range('burst_size', 1, 1, 14)
    check_range('burst_size', 14, 1, 14)
    for bad in (0, 15):
        with pytest.raises(ValueError, match=rf'^BurstSRDataset: burst_size must be in 1\.\.14, got {bad}$'):
            check_range('burst_size', bad, 1, 14, owner='BurstSRDataset')


def test_check_choice():
    check_choice('phase', 'val', ('train', 'val', 'test'))
    with pytest.raises(ValueError, match=r"^channel_order must be 'bgr' or 'rgb', got 'RGB'$"):
        check_choice('channel_order', 'RGB', ('bgr', 'rgb'))
    with pytest.raises(ValueError, match=r"^phase must be 'train', 'val' or 'test', got 'eval'$"):
        check_choice('phase', 'eval', ('train', 'val', 'test'))
    with pytest.raises(ValueError, match=r"^x must be 'a', got None$"):
        check_choice('x', None, ('a',))


def test_check_multiple():
    check_multiple('crop_size', 64, 8, '2*downsample_factor')
    with pytest.raises(ValueError, match=r'^crop_size must be a positive multiple of 2\*downsample_factor = 8, '
                                         r'got 60$'):
        check_multiple('crop_size', 60, 8, '2*downsample_factor')
    with pytest.raises(ValueError, match=r'^gt_size must be a positive multiple of 4, got 0$'):
        check_multiple('gt_size', 0, 4)


def test_the_datasets_use_them(tmp_path):
    from codes.data.burstsr_dataset import BurstSRDataset
    from codes.data.synthetic_burst_dataset import SyntheticBurstDataset, SyntheticBurstValDataset
    with pytest.raises(ValueError, match=r"^warp_backend must be 'auto', 'opencv' or 'fixed_point', got 'cv'$"):
        SyntheticBurstDataset(str(tmp_path), warp_backend='cv')
    with pytest.raises(ValueError, match=r'^crop_size must be a positive multiple of 2\*downsample_factor = 4'):
        SyntheticBurstDataset(str(tmp_path), crop_size=30, downsample_factor=2)
    with pytest.raises(ValueError, match=r'^burst_size must be >= 1, got 0$'):
        SyntheticBurstValDataset(str(tmp_path), burst_size=0)
    with pytest.raises(ValueError, match=r"^BurstSRDataset: split must be 'train' or 'val', got 'test'$"):
        BurstSRDataset(str(tmp_path), split='test')
