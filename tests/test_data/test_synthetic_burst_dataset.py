"""Synthetic burst generation (geometry, OpenCV 4.x warp rule, draw order), the two datasets and the sample data."""
import os
import pickle
import random
import shutil

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from codes.data import build_dataset
from codes.data import burst_synthesis
from codes.data import camera_pipeline as cp
from codes.data import synthetic_burst_dataset as sb
from codes.scripts.make_sample_data import is_complete, make_sample_data, synthesize_val_burst
from codes.utils.safe_pickle import safe_load_pickle

META_KEYS = {'rgb2cam', 'cam2rgb', 'rgb_gain', 'red_gain', 'blue_gain', 'smoothstep', 'gamma', 'shot_noise_level',
             'read_noise_level'}


def _frame0_rule(q: np.ndarray) -> np.ndarray:
    """Spec §2.3: the (1.5, 1.5)-shifted warp of a uint8 image is the rounded mean of q[y-2:y, x-2:x]."""
    h, w = q.shape[:2]
    p = np.zeros((h + 2, w + 2) + q.shape[2:], dtype=np.int32)
    p[2:, 2:] = q
    return ((p[:h, :w] + p[:h, 1:w + 1] + p[1:h + 1, :w] + p[1:h + 1, 1:w + 1] + 2) >> 2).astype(np.uint8)


def _resize_rule(c: np.ndarray) -> np.ndarray:
    """Spec §2.1 step 5.6: 4x INTER_LINEAR downsampling = rounded mean of pixels 4j+1 and 4j+2 on each axis."""
    c = c.astype(np.int32)
    return ((c[1::4, 1::4] + c[1::4, 2::4] + c[2::4, 1::4] + c[2::4, 2::4] + 2) >> 2).astype(np.uint8)


def _textured(seed: int, size: int) -> torch.Tensor:
    """A smooth random sRGB image (3, size, size) in [0, 1]."""
    rs = np.random.RandomState(seed)
    img = cv2.resize(rs.rand(size // 8, size // 8, 3).astype(np.float32), (size, size),
                     interpolation=cv2.INTER_CUBIC)
    return torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------------- geometry
def test_warp_fixed_point_frame0_rule():
    q = np.random.RandomState(0).randint(0, 256, (30, 42, 3), dtype=np.uint8)
    t0 = burst_synthesis.transform_matrix(30, 42, burst_synthesis.FrameTransform(1.5, 1.5, 0.0))
    np.testing.assert_array_equal(burst_synthesis.warp_affine_fixed_point(q, t0, (42, 30)), _frame0_rule(q))


@pytest.mark.skipif(not cv2.__version__.startswith('4.'), reason='needs OpenCV 4.x (fixed-point warpAffine)')
def test_warp_fixed_point_matches_opencv4():
    rs, rng = np.random.RandomState(1), random.Random(1)
    q = rs.randint(0, 256, (30, 42, 3), dtype=np.uint8)
    t0 = burst_synthesis.transform_matrix(30, 42, burst_synthesis.FrameTransform(1.5, 1.5, 0.0))
    np.testing.assert_array_equal(cv2.warpAffine(q, t0, (42, 30), flags=cv2.INTER_LINEAR), _frame0_rule(q))
    for k in range(20):
        img = rs.randint(0, 256, (int(rs.randint(16, 80)), int(rs.randint(16, 80)), 3), dtype=np.uint8)
        if k % 2:
            img = cv2.GaussianBlur(img, (5, 5), 1.5)
        h, w = img.shape[:2]
        t = burst_synthesis.FrameTransform(rng.uniform(-24, 24), rng.uniform(-24, 24), rng.uniform(-1, 1),
                              0.05 * (k % 3 == 0), 0.0, 1.0, 1.1 if k % 5 == 0 else 1.0)
        m = burst_synthesis.transform_matrix(h, w, t)
        ours = burst_synthesis.warp_affine_fixed_point(img, m, (w, h))
        theirs = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        np.testing.assert_array_equal(ours, theirs)


def test_transform_matrix_rotation_convention():
    m = burst_synthesis.transform_matrix(100, 200, burst_synthesis.FrameTransform(3.0, -2.0, 30.0))
    theta = np.deg2rad(30.0)
    a, b = np.cos(theta), np.sin(theta)
    assert np.allclose(m[:, :2], [[a, b], [-b, a]])
    # The rotation centre (W/2, H/2) moves by exactly the (rotated) translation.
    centre = np.array([100.0, 50.0, 1.0])
    assert np.allclose(m @ centre, centre[:2] + m[:, :2] @ np.array([3.0, -2.0]))


def test_downsample_rule():
    c = np.random.RandomState(2).randint(0, 256, (32, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(burst_synthesis.downsample_uint8(c, 4), _resize_rule(c))


def test_sample_burst_transforms_ranges_and_draws():
    rng = random.Random(0)
    transforms = burst_synthesis.sample_burst_transforms(14, rng)
    assert transforms[0] == burst_synthesis.FrameTransform(1.5, 1.5, 0.0)
    for t in transforms[1:]:
        assert abs(t.tx) <= 24 and abs(t.ty) <= 24 and abs(t.theta) <= 1
        assert (t.shear_x, t.shear_y, t.ar_factor, t.scale) == (0.0, 0.0, 1.0, 1.0)
    ref = random.Random(0)
    for _ in range(13 * 7):  # seven uniforms per frame 1..13, none for frame 0
        ref.random()
    assert rng.random() == ref.random()
    rng = random.Random(0)
    still = burst_synthesis.sample_burst_transforms(3, rng, max_translation=0.0)
    assert all((t.tx, t.ty) == (1.5, 1.5) for t in still)
    ref = random.Random(0)
    for _ in range(2 * 5):  # the translation draws are skipped
        ref.random()
    assert rng.random() == ref.random()


# ---------------------------------------------------------------------------------------------------- synthesis
def test_frame0_aligned_with_gt():
    crop, border = 64, 24
    image = _textured(0, crop + 2 * border)
    s = burst_synthesis.rgb_to_raw_burst(image, 3, random.Random(0), torch.Generator().manual_seed(0), add_noise=False,
                            border_crop=border, warp_backend='fixed_point')
    assert s.gt.shape == (3, crop, crop) and s.burst.shape == (3, 4, crop // 8, crop // 8)
    # Exact (spec §2.3): warp rule, border crop, resize rule on the uint8-quantised linear image.
    linear = cp.unprocess(image, s.meta_info['rgb2cam'], s.meta_info['rgb_gain'], s.meta_info['red_gain'],
                          s.meta_info['blue_gain'])
    torch.testing.assert_close(linear[:, border:-border, border:-border], s.gt)
    q = (linear * 255.0).permute(1, 2, 0).numpy().astype(np.uint8)
    lr = _resize_rule(_frame0_rule(q)[border:-border, border:-border])
    frame0 = (s.burst_rgb[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(frame0, lr)
    torch.testing.assert_close(s.burst[0], cp.mosaic(s.burst_rgb[0]))
    # Tolerance form: LR pixel j ~ [1, 2, 1]/4-weighted mean of the quantised GT around GT pixel 4j.
    qgt = torch.from_numpy((s.gt * 255.0).numpy().astype(np.uint8)).float()
    k = torch.tensor([1.0, 2.0, 1.0]) / 4
    kernel = (k[:, None] * k[None, :]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    smooth = torch.nn.functional.conv2d(qgt[None], kernel, padding=1, groups=3)[0]
    expected_r = smooth[0, 8::8, 8::8] / 255  # packed R (i, j) is LR (2i, 2j), GT (8i, 8j); skip the border
    diff = (s.burst[0, 0, 1:, 1:] - expected_r).abs().max()
    assert diff <= 2.01 / 255


def test_other_frames_shift_within_range():
    crop, border = 256, 24
    image = _textured(3, crop + 2 * border)
    s = burst_synthesis.rgb_to_raw_burst(image, 8, random.Random(4), torch.Generator().manual_seed(4), add_noise=False,
                            max_rotation=0.0, border_crop=border)
    gray0 = s.burst_rgb[0].mean(0).double().numpy()
    for t, frame in zip(s.transforms[1:], s.burst_rgb[1:]):
        assert abs(t.tx) <= 24 and abs(t.ty) <= 24 and t.theta == 0.0
        (dx, dy), _ = cv2.phaseCorrelate(gray0, frame.mean(0).double().numpy())
        # Frame k samples the source shifted by (t - 1.5) HR px relative to frame 0, i.e. / 4 LR px.
        assert abs(dx - (t.tx - 1.5) / 4) < 0.4 and abs(dy - (t.ty - 1.5) / 4) < 0.4


def test_burst_ranges_and_reproducible_draws():
    image = _textured(1, 112)
    a = burst_synthesis.rgb_to_raw_burst(image, 14, random.Random(7), torch.Generator().manual_seed(7), border_crop=24)
    rng, gen = random.Random(7), torch.Generator().manual_seed(7)
    b = burst_synthesis.rgb_to_raw_burst(image, 14, rng, gen, border_crop=24)
    torch.testing.assert_close(a.burst, b.burst, rtol=0, atol=0)
    assert 0 <= float(a.burst.min()) and float(a.burst.max()) <= 1 and 0 <= float(a.gt.min()) <= 1
    assert a.burst.shape == (14, 4, 8, 8) and a.gt.shape == (3, 64, 64)
    assert set(a.meta_info) == META_KEYS and a.meta_info['shot_noise_level'] > 0
    # Python draws: gauss pair (2) + red + blue + 13 frames x 7 + log shot; the read term reuses the cached normal.
    ref = random.Random(7)
    for _ in range(2 + 2 + 13 * 7 + 1):
        ref.random()
    assert rng.random() == ref.random()
    # Torch draws: 4 CCM weights, then one normal_ over the whole burst.
    ref_gen = torch.Generator().manual_seed(7)
    torch.empty(4, 1, 1).uniform_(0, 1, generator=ref_gen)
    torch.empty(14, 4, 8, 8).normal_(generator=ref_gen)
    assert torch.rand(1, generator=gen).item() == torch.rand(1, generator=ref_gen).item()


def test_global_generators_reproduce_the_original_calls():
    """``random._inst`` and ``generator=None`` draw from the global generators, as the original code did."""
    image = _textured(2, 80)
    random.seed(3)
    torch.manual_seed(3)
    a = burst_synthesis.rgb_to_raw_burst(image, 4, random._inst, None, border_crop=8)
    b = burst_synthesis.rgb_to_raw_burst(image, 4, random.Random(3), torch.Generator().manual_seed(3), border_crop=8)
    torch.testing.assert_close(a.burst, b.burst, rtol=0, atol=0)
    assert a.meta_info['read_noise_level'] == b.meta_info['read_noise_level']


def test_random_crop_upsamples_small_images():
    small = torch.rand(3, 40, 60)
    out = burst_synthesis.random_crop(small, 64, random.Random(0))  # largest 40x40 crop, upsampled
    assert out.shape == (3, 64, 64)
    ref = random.Random(0)
    r1, c1 = ref.randint(0, 0), ref.randint(0, 20)
    expected = torch.nn.functional.interpolate(small[None, :, r1:r1 + 40, c1:c1 + 40], size=(64, 64),
                                               mode='bilinear', align_corners=False)[0]
    torch.testing.assert_close(out, expected)
    u8 = (torch.rand(3, 90, 80) * 255).to(torch.uint8)
    out = burst_synthesis.random_crop(u8, 64, random.Random(0))  # uint8 is converted as ToTensor would
    ref = random.Random(0)
    r1, c1 = ref.randint(0, 26), ref.randint(0, 16)
    torch.testing.assert_close(out, u8[:, r1:r1 + 64, c1:c1 + 64].float() / 255, rtol=0, atol=0)

# ---------------------------------------------------------------------------------------------------- training dataset
def test_build_training_dataset_and_loader(sample_data):
    opt = {'type': 'SyntheticBurstDataset', 'dataroot': str(sample_data / 'zurich'), 'crop_size': 64,
           'burst_size': 4, 'batch_size_per_gpu': 2}
    ds = build_dataset(opt)
    assert len(ds) == 40 and 'type' in opt
    item = ds[0]
    assert set(item) == {'lq', 'gt', 'meta_info', 'key'}
    assert item['lq'].shape == (4, 4, 8, 8) and item['lq'].dtype == torch.float32
    assert item['gt'].shape == (3, 64, 64) and item['gt'].dtype == torch.float32
    assert set(item['meta_info']) == META_KEYS and isinstance(item['key'], str)
    assert item['key'].startswith('train/canon/0.jpg')
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batch = next(iter(loader))
    assert batch['lq'].shape == (2, 4, 4, 8, 8) and batch['gt'].shape == (2, 3, 64, 64)
    assert batch['meta_info']['cam2rgb'].shape == (2, 3, 3) and batch['meta_info']['rgb_gain'].shape == (2,)
    assert cp.process_linear_image_rgb(batch['gt'], batch['meta_info']).shape == (2, 3, 64, 64)


def test_training_dataset_options(sample_data, tmp_path):
    root = str(sample_data / 'zurich')
    ds = sb.SyntheticBurstDataset(root, crop_size=32, burst_size=2, seed=5, dataset_enlarge_ratio=3,
                                  noise=False, channel_order='rgb')
    assert len(ds) == 120
    a, b = ds[41], ds[41]
    torch.testing.assert_close(a['lq'], b['lq'], rtol=0, atol=0)
    assert a['meta_info']['shot_noise_level'] == 0.0 and a['key'].startswith('train/canon/1.jpg')
    bgr = sb.SyntheticBurstDataset(root, crop_size=32, burst_size=2, seed=5, noise=False)
    assert not torch.equal(bgr[0]['gt'], sb.SyntheticBurstDataset(root, crop_size=32, burst_size=2, seed=5,
                                                                    noise=False, channel_order='rgb')[0]['gt'])
    # Any image folder works when there is no Zurich layout.
    shutil.copy(sample_data / 'zurich/train/canon/3.jpg', tmp_path / 'a.jpg')
    assert len(sb.SyntheticBurstDataset(str(tmp_path), crop_size=32)) == 1
    with pytest.raises(ValueError, match='io_backend.type'):
        sb.SyntheticBurstDataset(root, io_backend={'type': 'ceph'})
    with pytest.raises(ValueError, match='crop_size'):
        sb.SyntheticBurstDataset(root, crop_size=60)
    with pytest.raises(FileNotFoundError, match='test/canon'):
        sb.SyntheticBurstDataset(root, phase='val')
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='datasets/README.md') as err:
        sb.SyntheticBurstDataset(str(empty))
    assert str(empty) in str(err.value)


# ---------------------------------------------------------------------------------------------------- validation set
def test_val_dataset_layout_and_content(sample_data):
    root = sample_data / 'SyntheticBurstVal'
    ds = build_dataset({'type': 'SyntheticBurstValDataset', 'dataroot': str(root)})
    assert len(ds) == 8
    item = ds[1]
    assert item['key'] == '0001'
    assert item['lq'].shape == (14, 4, 48, 48) and item['gt'].shape == (3, 384, 384)
    assert item['lq'].dtype == torch.float32 and item['gt'].dtype == torch.float32
    assert META_KEYS <= set(item['meta_info']) and item['meta_info']['frame_num'] == 1
    assert isinstance(item['meta_info']['cam2rgb'], torch.Tensor)
    # The files hold exactly the generated burst, channels in the generator's order (14-bit quantised).
    expected = synthesize_val_burst(1, seed=0)
    assert (item['lq'] - expected.burst).abs().max() <= 1 / 2 ** 14
    assert (item['gt'] - expected.gt).abs().max() <= 1 / 2 ** 14
    torch.testing.assert_close(item['meta_info']['rgb2cam'], expected.meta_info['rgb2cam'], rtol=0, atol=0)
    short = sb.SyntheticBurstValDataset(str(root), burst_size=5)[1]
    torch.testing.assert_close(short['lq'], item['lq'][:5])
    with pytest.raises(ValueError, match='burst_size'):
        sb.SyntheticBurstValDataset(str(root), burst_size=15)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch['lq'].shape == (2, 14, 4, 48, 48) and batch['key'] == ['0000', '0001']


def test_val_dataset_accepts_val_subfolder(sample_data, tmp_path):
    os.symlink(sample_data / 'SyntheticBurstVal', tmp_path / 'val')
    ds = sb.SyntheticBurstValDataset(str(tmp_path), burst_size=2)
    assert len(ds) == 8 and ds[0]['lq'].shape == (2, 4, 48, 48)


def _png_rgba16(path, array: np.ndarray) -> None:
    """A minimal PNG writer (no OpenCV): 16-bit RGBA, channels stored in the array's order."""
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data) & 0xffffffff)

    h, w, _ = array.shape
    rows = b''.join(b'\x00' + array[y].astype('>u2').tobytes() for y in range(h))
    ihdr = struct.pack('>IIBBBBB', w, h, 16, 6, 0, 0, 0)
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))


def test_png_channel_order_round_trip(tmp_path):
    frame = np.random.RandomState(0).randint(0, 2 ** 14, (6, 8, 4)).astype(np.uint16)
    # Written and read with OpenCV (as the official files and make_sample_data are): the in-memory order survives.
    assert cv2.imwrite(str(tmp_path / 'f.png'), frame)
    back = sb._read_uint16_png(tmp_path / 'f.png', 4)
    torch.testing.assert_close(back, torch.from_numpy(frame.astype(np.float32)).permute(2, 0, 1) / 2 ** 14)
    # OpenCV swaps BGRA <-> RGBA on disk: a file whose stored channels are [a, b, c, d] reads as [c, b, a, d], so
    # a non-OpenCV reader would see an OpenCV-written RGGB frame as [G_b, G_r, R, B].
    _png_rgba16(tmp_path / 'plain.png', frame)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'plain.png'), cv2.IMREAD_UNCHANGED),
                                  frame[..., [2, 1, 0, 3]])


def test_val_dataset_missing_files(sample_data, tmp_path):
    root = tmp_path / 'set'
    shutil.copytree(sample_data / 'SyntheticBurstVal', root)
    (root / 'bursts/0002/im_raw_03.png').unlink()
    (root / 'gt/0003/meta_info.pkl').unlink()
    (root / 'gt/0004/im_rgb.png').unlink()
    ds = sb.SyntheticBurstValDataset(str(root))
    for index, name in ((2, 'bursts/0002/im_raw_03.png'), (3, 'gt/0003/meta_info.pkl'), (4, 'gt/0004/im_rgb.png')):
        with pytest.raises(FileNotFoundError, match=name):
            ds[index]
    with pytest.raises(FileNotFoundError, match='datasets/README.md'):
        sb.SyntheticBurstValDataset(str(tmp_path / 'nothing'))


# ---------------------------------------------------------------------------------------------------- safe pickle
class _Evil:
    def __reduce__(self):
        return os.system, ('echo pwned',)


class _Tag:
    def __init__(self, value):
        self.value = value


def test_safe_pickle_refuses_code(tmp_path):
    path = tmp_path / 'meta_info.pkl'
    with open(path, 'wb') as f:
        pickle.dump({'rgb_gain': 1.0, 'x': _Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match='system') as err:
        safe_load_pickle(path)
    assert str(path) in str(err.value)


def test_safe_pickle_reads_tensors_numpy_and_extras(tmp_path):
    data = {'t': torch.randn(3, 3), 'a': np.arange(4.0), 's': np.float32(2.5), 'b': True, 'n': None, 'l': [1, 2],
            'tag': _Tag(3)}
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f'p{protocol}.pkl'
        with open(path, 'wb') as f:
            pickle.dump(data, f, protocol=protocol)
        with pytest.raises(pickle.UnpicklingError, match='_Tag'):
            safe_load_pickle(path)
        out = safe_load_pickle(path, extra_allowed={f'{__name__}._Tag': _Tag})
        torch.testing.assert_close(out['t'], data['t'])
        np.testing.assert_array_equal(out['a'], data['a'])
        assert out['s'] == np.float32(2.5) and out['b'] is True and out['n'] is None and out['tag'].value == 3
    with pytest.raises(FileNotFoundError, match='missing.pkl'):
        safe_load_pickle(tmp_path / 'missing.pkl')


# ---------------------------------------------------------------------------------------------------- sample data
def test_make_sample_data_is_idempotent(sample_data):
    assert is_complete(sample_data)
    messages = []
    assert make_sample_data(sample_data, num_val=8, log=messages.append) is False
    assert 'already complete' in messages[0]
    assert len(list((sample_data / 'zurich/train/canon').glob('*.jpg'))) == 40
    assert cv2.imread(str(sample_data / 'zurich/train/canon/0.jpg')).shape == (448, 448, 3)
