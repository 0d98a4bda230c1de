"""Registry: lazy discovery, unknown names, duplicates, and a broken module that fails only its own names."""
import sys
import textwrap

import pytest

from codes.utils.build import OptionError, build_from_registry
from codes.utils.registry import Registry


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    pkg = tmp_path / 'fakepkg_reg'
    pkg.mkdir()
    (pkg / '__init__.py').write_text(
        "from codes.utils.registry import Registry\nREG = Registry('arch', 'fakepkg_reg', '_arch.py')\n")
    (pkg / 'good_arch.py').write_text(textwrap.dedent('''
        from fakepkg_reg import REG

        @REG.register()
        class GoodNet:
            def __init__(self, width: int = 4, rate: float = 0.5, name: str = 'x'):
                self.width, self.rate, self.name = width, rate, name
    '''))
    (pkg / 'broken_arch.py').write_text(textwrap.dedent('''
        import a_module_that_does_not_exist  # noqa
        from fakepkg_reg import REG

        @REG.register()
        class BrokenNet:
            pass
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    import fakepkg_reg
    yield fakepkg_reg.REG
    for name in [m for m in sys.modules if m.startswith('fakepkg_reg')]:
        del sys.modules[name]


def test_discovery_is_lazy_and_isolates_broken_modules(fake_package):
    assert fake_package.keys() == ['BrokenNet', 'GoodNet']
    assert 'fakepkg_reg.good_arch' not in sys.modules  # nothing imported by listing
    assert fake_package.get('GoodNet').__name__ == 'GoodNet'
    with pytest.raises(ImportError, match=r"BrokenNet' is defined in fakepkg_reg.broken_arch.*a_module_that"):
        fake_package.get('BrokenNet')
    assert fake_package.get('GoodNet') is not None  # the good one still works


def test_unknown_name_lists_registered_and_close_matches(fake_package):
    with pytest.raises(KeyError) as info:
        fake_package.get('GodNet')
    msg = info.value.args[0]
    assert "Did you mean 'GoodNet'" in msg and 'BrokenNet, GoodNet' in msg


def test_duplicate_registration_names_both_modules():
    reg = Registry('loss')

    @reg.register()
    class A:  # noqa: D401
        pass

    B = type('A', (), {'__module__': 'elsewhere'})
    with pytest.raises(KeyError, match='registered twice, in .*test_registry and in elsewhere'):
        reg.register(B)


def test_builder_checks_keys_and_types(fake_package):
    net = build_from_registry(fake_package, {'type': 'GoodNet', 'width': 8, 'rate': '1e-4'}, 'network_g')
    assert net.width == 8 and net.rate == pytest.approx(1e-4)
    with pytest.raises(OptionError, match=r"'network_g.widht'.*Did you mean 'width'"):
        build_from_registry(fake_package, {'type': 'GoodNet', 'widht': 8}, 'network_g')
    with pytest.raises(OptionError, match=r"'network_g.width': expected an integer"):
        build_from_registry(fake_package, {'type': 'GoodNet', 'width': 'wide'}, 'network_g')
    with pytest.raises(OptionError, match=r"'network_g.type'.*No arch named 'Nope'"):
        build_from_registry(fake_package, {'type': 'Nope'}, 'network_g')
    opt = {'type': 'GoodNet', 'width': 2}
    build_from_registry(fake_package, opt, 'network_g')
    assert opt == {'type': 'GoodNet', 'width': 2}  # the option dict is left unchanged


def test_real_registries_list_the_project_classes():
    from codes.archs import ARCH_REGISTRY, build_network
    from codes.data import DATASET_REGISTRY
    from codes.losses import LOSS_REGISTRY
    from codes.models import MODEL_REGISTRY
    assert 'BSRT' in ARCH_REGISTRY.keys()
    assert {'SyntheticBurstDataset', 'SyntheticBurstValDataset'} <= set(DATASET_REGISTRY.keys())
    assert {'L1Loss', 'MSELoss', 'CharbonnierLoss'} <= set(LOSS_REGISTRY.keys())
    assert 'BurstSRModel' in MODEL_REGISTRY.keys()
    with pytest.raises(OptionError, match="Registered archs: .*BSRT"):
        build_network({'type': 'BSRTT'})


def test_syntax_error_fails_only_that_files_names_and_name_keyword_is_found(fake_package, tmp_path):
    pkg = tmp_path / 'fakepkg_reg'
    (pkg / 'typo_arch.py').write_text('from fakepkg_reg import REG\n\n@REG.register()\nclass TypoNet(:\n    pass\n')
    (pkg / 'named_arch.py').write_text(textwrap.dedent('''
        from fakepkg_reg import REG

        @REG.register(name='calculate_alias')
        def some_function(x: int = 1):
            return x
    '''))
    fake_package._index = None  # rescan with the new files
    assert 'calculate_alias' in fake_package.keys() and 'some_function' not in fake_package.keys()
    assert fake_package.get('calculate_alias').__name__ == 'some_function'
    assert fake_package.get('GoodNet').__name__ == 'GoodNet'
    with pytest.raises(KeyError, match=r"No arch named 'TypoNet'.*fakepkg_reg.typo_arch could not be read: "
                                       r'SyntaxError'):
        fake_package.get('TypoNet')


def test_basicsr_metric_names_are_aliases():
    import torch

    from codes.metrics import build_metric
    from codes.metrics.psnr_ssim_metric import calculate_psnr_matlab, calculate_ssim_matlab
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 24, 24, generator=g)
    pred = (gt + 0.05 * torch.randn(3, 24, 24, generator=g)).clamp(0, 1)
    psnr = build_metric({'type': 'calculate_psnr', 'crop_border': 2})
    assert psnr(pred, gt) == calculate_psnr_matlab(pred, gt, crop_border=2, test_y_channel=False)
    ssim = build_metric({'type': 'calculate_ssim', 'crop_border': 2, 'test_y_channel': True})
    assert ssim(pred, gt) == calculate_ssim_matlab(pred, gt, crop_border=2, test_y_channel=True)
    with pytest.raises(OptionError, match='calculate_psnr_basicsr needs the key.s. crop_border'):
        build_metric({'type': 'calculate_psnr'})
