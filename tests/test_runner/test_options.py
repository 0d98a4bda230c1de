"""Option files: safe YAML, typed overrides, and errors that name the file and the key path."""
import pytest
import yaml

from codes.utils.options import (OptionError, apply_overrides, load_yaml, normalize_options, parse_options,
                                 validate_options)

TINY_NET = {'type': 'BSRT', 'embed_dim': 12, 'depths': [1, 1], 'num_heads': 2, 'burst_size': 3}


def base_options(root):
    (root / 'imgs').mkdir(exist_ok=True)
    return {
        'name': 'opt_test', 'model_type': 'BurstSRModel', 'manual_seed': 1,
        'datasets': {'train': {'type': 'SyntheticBurstDataset', 'dataroot': str(root / 'imgs'), 'burst_size': 3,
                               'crop_size': 256, 'batch_size_per_gpu': 1}},
        'network_g': dict(TINY_NET),
        'train': {'total_iter': 2, 'optim_g': {'type': 'Adam', 'lr': '1e-4'}},
    }


def write(tmp_path, opt, name='opt.yml'):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(opt))
    return path


def test_exponent_numbers_are_floats(tmp_path):
    path = tmp_path / 'a.yml'
    path.write_text('lr: 1e-4\nb: 5e3\nc: -2.5E-3\nd: 10\ne: "1e-4"\n')
    data = load_yaml(path)
    assert data == {'lr': 1e-4, 'b': 5000.0, 'c': -2.5e-3, 'd': 10, 'e': '1e-4'}
    assert isinstance(data['lr'], float) and isinstance(data['d'], int)


def test_unsafe_yaml_is_refused(tmp_path):
    path = tmp_path / 'evil.yml'
    path.write_text('a: !!python/object/apply:os.system ["echo hacked"]\n')
    with pytest.raises(OptionError, match='evil.yml.*not valid YAML'):
        load_yaml(path)


def test_overrides_are_typed_and_can_add_keys():
    opt = {'train': {'optim_g': {'lr': 1.0}}}
    out = apply_overrides(opt, ['train.optim_g.lr=2e-4', 'train:optim_g:betas=[0.9, 0.99]',
                                'network_g.use_checkpoint=true', 'path.pretrain_network_g=~'])
    assert out['train']['optim_g'] == {'lr': 2e-4, 'betas': [0.9, 0.99]}
    assert out['network_g'] == {'use_checkpoint': True} and out['path'] == {'pretrain_network_g': None}
    assert opt == {'train': {'optim_g': {'lr': 1.0}}}  # input untouched
    with pytest.raises(OptionError, match="'train.optim_g.lr'.*not a mapping"):
        apply_overrides(opt, ['train.optim_g.lr.x=1'])
    with pytest.raises(OptionError, match='key.path=value'):
        apply_overrides(opt, ['no_equals_sign'])


def test_valid_options_are_converted(tmp_path):
    opt = validate_options(base_options(tmp_path), 'x.yml')
    assert opt['train']['optim_g']['lr'] == pytest.approx(1e-4)
    norm = normalize_options(opt, tmp_path, is_train=True)
    assert norm['path']['models'] == str(tmp_path / 'experiments' / 'opt_test' / 'models')
    assert norm['train']['precision'] == 'fp32' and norm['datasets']['train']['name'] == 'train'


@pytest.mark.parametrize('mutate, pattern', [
    (lambda o: o.update(nmae='x'), r"x.yml: option 'nmae': unknown key. Did you mean 'name'"),
    (lambda o: o['train'].update(total_itre=3), r"option 'train.total_itre': unknown key"),
    (lambda o: o['train'].update(total_iter='many'), r"option 'train.total_iter': expected an integer"),
    (lambda o: o['train'].update(precision='fp8'), r"option 'train.precision': must be one of fp32, fp16, bf16"),
    (lambda o: o.pop('model_type'), r"option 'model_type': required key is missing"),
    (lambda o: o['network_g'].update(embed_dims=3), r"option 'network_g.embed_dims': unknown key for BSRT"),
    (lambda o: o['network_g'].update(type='BSTR'), r"option 'network_g.type': No arch named 'BSTR'.*'BSRT'"),
    (lambda o: o['train']['optim_g'].update(type='Adamm'), r"'train.optim_g.type': No optimizer named 'Adamm'"),
    (lambda o: o['train']['optim_g'].update(lr=[1]), r"'train.optim_g.lr': expected"),
    (lambda o: o['train'].update(pixel_opt={'type': 'L1Loss', 'weight': 2}), r"'train.pixel_opt.weight': unknown"),
    (lambda o: o['datasets']['train'].update(crop=3), r"'datasets.train.crop': unknown key"),
    (lambda o: o['datasets']['train'].pop('batch_size_per_gpu'), r"'datasets.train.batch_size_per_gpu': required"),
    (lambda o: o['datasets']['train'].update(dataroot='/nonexistent/zurich'),
     r"'datasets.train.dataroot': data folder '/nonexistent/zurich' does not exist. See datasets/README.md"),
    (lambda o: o.update(val={'metrics': {'psnr': {'type': 'calculate_psnr_linear', 'border': 4}}}),
     r"'val.metrics.psnr.border': unknown key"),
])
def test_bad_options_name_file_and_key(tmp_path, mutate, pattern):
    opt = base_options(tmp_path)
    mutate(opt)
    with pytest.raises(OptionError, match=pattern):
        validate_options(opt, 'x.yml')


def test_parse_options_end_to_end(tmp_path, monkeypatch):
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    path = write(tmp_path, base_options(tmp_path))
    opt, args = parse_options(tmp_path, True, ['-opt', str(path), '--force_yml', 'train.optim_g.lr=3e-4',
                                               '--local-rank', '0', '--launcher', 'pytorch', '--debug'])
    assert opt['train']['optim_g']['lr'] == pytest.approx(3e-4)
    assert opt['name'] == 'debug_opt_test' and opt['logger']['print_freq'] == 1 and opt['val']['val_freq'] == 8
    bad = write(tmp_path, {**base_options(tmp_path), 'logger': {'print_frq': 1}}, 'bad.yml')
    with pytest.raises(OptionError, match=r"bad.yml: option 'logger.print_frq': unknown key"):
        parse_options(tmp_path, True, ['-opt', str(bad)])
    with pytest.raises(OptionError, match=r"bad.yml: option 'network_g.depths\[0\]': expected an integer"):
        parse_options(tmp_path, True,
                      ['-opt', str(bad), '--force_yml', 'logger={print_freq: 1}', 'network_g.depths=[a, 1]'])
