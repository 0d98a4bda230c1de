"""codes.scripts.import_options: official DCLS option files and BSRT command lines become our recipes.

The fixtures are written from the published configurations (DCLS-SR ``train_setting1_x4.yml`` and
``test_setting1_x4.yml`` fields, the two BSRT README commands); the expected values are those of our shipped
option files for the same recipes."""
import yaml

from codes.scripts.import_options import import_options, main
from codes.utils.options import load_yaml

DCLS_TRAIN_X4 = '''
name: DCLSx4_setting1
use_tb_logger: true
model: blind
distortion: sr
scale: 4
gpu_ids: [0, 1, 2, 3]
pca_matrix_path: ../../../pca_matrix/DCLS/pca_matrix.pth
degradation:
  random_kernel: True
  ksize: 21
  code_length: 10
  sig_min: 0.2
  sig_max: 4.0
  rate_iso: 1.0
  random_disturb: false
datasets:
  train:
    name: DIV2K
    mode: GT
    dataroot_GT: /data/DIV2K_Flickr2K/HR.lmdb
    use_shuffle: true
    n_workers: 8
    batch_size: 64
    GT_size: 256
    LR_size: 64
    use_flip: true
    use_rot: true
    color: RGB
  val:
    name: Set5
    mode: LQGT
    dataroot_GT: /data/setting1/Set5/x4HRblur.lmdb
    dataroot_LQ: /data/setting1/Set5/x4LRblur.lmdb
network_G:
  which_model_G: DCLS
  setting: {nf: 64, nb: 10, ng: 5, input_para: 256, kernel_size: 21}
path:
  pretrain_model_G: ~
  strict_load: true
  resume_state: ~
train:
  lr_G: !!float 4e-4
  lr_E: !!float 4e-4
  lr_scheme: MultiStepLR
  beta1: 0.9
  beta2: 0.99
  niter: 500000
  warmup_iter: -1
  lr_steps: [200000, 400000]
  lr_gamma: 0.5
  eta_min: !!float 1e-7
  pixel_criterion: l1
  pixel_weight: 1.0
  manual_seed: 0
  val_freq: !!float 2e3
logger:
  print_freq: 20
  save_checkpoint_freq: !!float 2e3
'''

DCLS_TEST_X4 = '''
name: DCLSx4_setting1
suffix: ~
model: blind
distortion: sr
scale: 4
crop_border: ~
gpu_ids: [0]
pca_matrix_path: ../../../pca_matrix/DCLS/pca_matrix.pth
datasets:
  test1: {name: Set5, mode: LQGT, dataroot_GT: /data/setting1/Set5/x4HRblur.lmdb,
          dataroot_LQ: /data/setting1/Set5/x4LRblur.lmdb}
  test2: {name: Set14, mode: LQGT, dataroot_GT: /data/setting1/Set14/x4HRblur.lmdb,
          dataroot_LQ: /data/setting1/Set14/x4LRblur.lmdb}
network_G:
  which_model_G: DCLS
  setting: {nf: 64, nb: 10, ng: 5, input_para: 256, kernel_size: 21}
path:
  pretrain_model_G: ./pretrained_models/DCLSx4_setting1.pth
'''

BSRT_SYNTHETIC = ('python main.py --n_GPUs 8 --lr 1e-4 --decay 150-300 --model BSRT --fp16 --model_level S '
                  '--swinfeature --batch_size 32 --burst_size 14 --patch_size 256')
BSRT_REAL = ('python main.py --n_GPUs 8 --lr 5e-5 --decay 40-80 --fp16 --model_level S --swinfeature --batch_size 8 '
             '--burst_size 14 --patch_size 80 --pre_train ../../synthetic/train_log/bsrt/real_models/bsrt_best.pth')


def test_dcls_training_file(tmp_path, capsys):
    src = tmp_path / 'train_setting1_x4.yml'
    src.write_text(DCLS_TRAIN_X4)
    out = tmp_path / 'x4.yml'
    assert main([str(src), '-o', str(out)]) == 0
    opt = load_yaml(out)
    ours = load_yaml('options/dcls/train_setting1_x4.yml')  # the same recipe, written by hand
    train = opt['datasets']['train']
    assert train['batch_size_per_gpu'] == ours['datasets']['train']['batch_size_per_gpu'] == 16  # 64 over 4 GPUs
    assert train['io_backend'] == {'type': 'lmdb'} and train['gt_size'] == 256 and train['kernel_size'] == 21
    assert opt['network_g'] == ours['network_g']
    assert opt['train']['total_iter'] == ours['train']['total_iter'] == 500000
    assert opt['train']['scheduler'] == ours['train']['scheduler']
    assert opt['train']['optim_g']['lr'] == 4e-4 and opt['train']['optim_g']['betas'] == [0.9, 0.99]
    assert opt['train']['lr_estimator'] == 4e-4 and opt['train']['warmup_iter'] == -1
    assert opt['val']['val_freq'] == 2000 and opt['logger']['save_checkpoint_freq'] == 2000
    assert opt['val']['metrics']['psnr'] == ours['val']['metrics']['psnr']  # Y channel, crop = scale
    err = capsys.readouterr().err
    for unmapped in ('pca_matrix_path', 'degradation.code_length', 'datasets.train.LR_size'):
        assert f'note: {unmapped}: not mapped' in err
    assert 'note: datasets.train.dataroot_gt' in err  # the original data folders do not exist here
    assert out.read_text().startswith(f'# Converted from {src}')


def test_dcls_test_file(tmp_path):
    (tmp_path / 'test_setting1_x4.yml').write_text(DCLS_TEST_X4)
    opt, notes = import_options(str(tmp_path / 'test_setting1_x4.yml'))
    assert set(opt['datasets']) == {'test_1', 'test_2'} and 'train' not in opt
    assert opt['datasets']['test_1']['type'] == 'PairedBlindSRDataset'
    assert opt['path']['pretrain_network_g'] == './pretrained_models/DCLSx4_setting1.pth'
    assert opt['val']['metrics']['ssim']['crop_border'] == 4  # crop_border ~ means the scale


def test_bsrt_synthetic_command_matches_our_recipe():
    opt, notes = import_options(BSRT_SYNTHETIC)
    ours = load_yaml('options/train_synthetic.yml')
    assert opt['datasets']['train']['batch_size_per_gpu'] == 4  # global 32 over 8 GPUs
    assert opt['train']['total_iter'] == ours['train']['total_iter'] == 300 * 1464  # 46839 / 32, padded
    assert opt['train']['scheduler'] == ours['train']['scheduler']
    assert opt['train']['freeze'] == ours['train']['freeze']  # spynet/dcnpack for 4 epochs, from scratch
    assert opt['train']['precision'] == 'fp16' and opt['network_g']['level'] == 'S'
    assert opt['datasets']['train']['crop_size'] == 256
    assert any('1464 iterations per epoch' in n for n in notes)


def test_bsrt_real_command_matches_our_recipe(tmp_path):
    cmd = tmp_path / 'real.sh'
    cmd.write_text(BSRT_REAL.replace('main.py', 'code/real/bsrt/main.py') + '\n')
    opt, notes = import_options(str(cmd))
    ours = load_yaml('options/train_real.yml')
    assert opt['model_type'] == 'RealBurstSRModel' and 'freeze' not in opt['train']
    assert opt['train']['total_iter'] == ours['train']['total_iter'] == 100 * 675  # 5405 // 8
    assert opt['train']['scheduler'] == ours['train']['scheduler']
    assert opt['datasets']['train']['crop_size'] == 80 and opt['datasets']['train']['batch_size_per_gpu'] == 1
    assert opt['path']['pretrain_network_g'].endswith('bsrt_best.pth')
    out = tmp_path / 'o.yml'
    assert main([str(cmd), '-o', str(out), '--dataset-size', '800']) == 0
    assert yaml.safe_load(out.read_text())['train']['total_iter'] == 100 * 100
