"""Training and evaluating detectors with a dynamic backbone: the detection datasets by
name, FPN-feature distillation, and train → eval → report from the command line."""

import copy
import csv
import json
from dataclasses import replace

import pytest
import torch

import laudnet
from laudnet.cli import main
from laudnet.data import ShapesDetection, build_datasets, write_coco
from laudnet.detection import METRICS, create_detector
from laudnet.errors import DataError
from laudnet.detection.regions import image_pixels, object_pixels
from laudnet.dynamic import dynamic_blocks
from laudnet.train.losses import background_loss
from laudnet.train.tasks import Detection, feature_mse, task_of


def test_shapes_detection_by_name_has_mixed_sizes_and_disjoint_splits():
    splits = build_datasets("shapes-detection", image_size=80, train_size=6, test_size=3, seed=1)
    info = splits.info
    assert (info.task, info.num_classes, info.in_channels, info.image_size) == ("detection", 9, 3, 80)
    assert info.classes == ShapesDetection.CLASSES and (len(splits.train), len(splits.test)) == (6, 3)
    sizes = {tuple(splits.train[i][0].shape[-2:]) for i in range(6)}
    assert len(sizes) > 1 and all(64 <= s <= 96 for size in sizes for s in size)
    assert not torch.equal(splits.train[0][0], splits.test[0][0])
    with pytest.raises(ValueError, match="shapes-detection needs an image size of at least 64, got 40"):
        build_datasets("shapes-detection", image_size=40)


def test_coco_by_name_reads_the_documented_layout(tmp_path):
    for split, seed in (("train", 0), ("val", 1)):
        write_coco(ShapesDetection(3, size=(48, 64), seed=seed), tmp_path / "annotations" / f"instances_{split}.json",
                   tmp_path / split)
    splits = build_datasets("coco", tmp_path, test_size=2)
    assert splits.info.task == "detection" and splits.info.image_size == 512
    assert splits.info.classes == ShapesDetection.CLASSES  # every category, even those without objects
    assert len(splits.train) == 3 and len(splits.test) == 2
    image, target = splits.test[0]
    assert image.shape[0] == 3 and target["boxes"].shape[1] == 4

    with pytest.raises(ValueError, match="dataset coco needs --data ROOT holding annotations/instances_train.json"):
        build_datasets("coco")
    (tmp_path / "annotations" / "instances_val.json").unlink()
    with pytest.raises(DataError, match="COCO annotations file .*instances_val.json not found"):
        build_datasets("coco", tmp_path)


def test_detection_data_needs_a_detector():
    spec = laudnet.train.RunSpec(model="resnet18", dataset="shapes-detection", image_size=64, train_size=2,
                                 test_size=1)
    with pytest.raises(ValueError, match="shapes-detection is a detection dataset and 'resnet18' not a detector; "
                                         "allowed: fasterrcnn_resnet18_fpn"):
        spec.build_model()


def test_feature_distillation_is_zero_for_the_teacher_itself_and_trains_the_body():
    teacher = create_detector("fasterrcnn_resnet18_fpn", paradigm="spatial", num_classes=9, min_size=64,
                              max_size=96).eval()
    laudnet.set_execution(teacher, "static")
    student = copy.deepcopy(teacher).train()
    laudnet.set_execution(student, "masked")
    dataset = ShapesDetection(2, size=64)  # one size: no padding (which the student's gates would skip)
    images, targets = zip(*[dataset[i] for i in range(2)])
    task = Detection()
    laudnet.set_decisions(student, rate=1.0)  # every gate open: the student computes what the teacher does
    for module in student.modules():  # batch statistics would differ from the teacher's running ones
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    _, kd, _ = task.losses(student, student, teacher, list(images), list(targets))
    assert float(kd) == pytest.approx(0.0, abs=1e-10)

    laudnet.clear_decisions(student)
    student.train()
    loss, kd, parts = task.losses(student, student, teacher, list(images), list(targets))
    assert set(parts) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert float(loss) == pytest.approx(float(sum(parts.values())))
    assert float(kd) > 0
    kd.backward()
    assert student.backbone.body.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())

    task = Detection("objects", background_weight=2.0)  # + β × the background the gates kept
    loss, _, parts = task.losses(student, student, teacher, list(images), list(targets))
    detector = sum(v for k, v in parts.items() if k != "background")
    assert 0 < float(parts["background"]) <= 1 and set(parts) > {"loss_classifier"}
    assert float(loss) == pytest.approx(float(detector + 2.0 * parts["background"]))
    with pytest.raises(ValueError, match="background weight must be a finite number of at least 0, got -1.0"):
        Detection(background_weight=-1)
    with pytest.raises(ValueError, match="background weight 0.5 needs a detection dataset"):
        task_of("classification", background_weight=0.5)


def test_feature_distillation_leaves_out_the_padding():
    student, teacher = torch.zeros(2, 4, 8, 10), torch.zeros(2, 4, 8, 10)
    teacher[1, :, :, 5:] = 3.0  # image 1 covers the left half of the padded 32x40 batch
    image = image_pixels([(32, 40), (32, 20)], (32, 40))
    assert float(feature_mse(student, teacher, image)) == 0.0
    teacher[1, :, :, 4] = 2.0
    assert float(feature_mse(student, teacher, image)) == pytest.approx(4.0 * 8 / (80 + 40))


def test_feature_distillation_on_objects_counts_only_the_cells_of_boxes():
    student, teacher = torch.zeros(3, 4, 8, 10), torch.zeros(3, 4, 8, 10)  # cells of 4x4 pixels of a 32x40 batch
    boxes = [torch.tensor([[5.0, 2.0, 12.0, 7.0]]), torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
    teacher[0, :, 5:, :] = 3.0  # rows 20-31: below the box
    teacher[1] = 3.0  # an image without objects
    teacher[2, :, 1:, 1:] = 3.0  # outside image 2's box, which covers only cell (0, 0)
    objects = object_pixels(boxes, (32, 40))
    assert float(feature_mse(student, teacher, objects)) == 0.0
    assert float(feature_mse(student, teacher, image_pixels([(32, 40)] * 3, (32, 40)))) > 0
    teacher[0, :, 1, 3] = 2.0  # rows 4-7, columns 12-15: the cell starts where the box ends
    assert float(feature_mse(student, teacher, objects)) == 0.0
    teacher[0, :, 1, 2] = 2.0  # rows 4-7, columns 8-11: inside the box; image 0's box covers 2 x 2 cells
    assert float(feature_mse(student, teacher, objects)) == pytest.approx(4.0 / (4 + 1))
    assert float(feature_mse(student, teacher, object_pixels([torch.zeros(0, 4)] * 3, (32, 40)))) == 0.0


def test_background_loss_is_the_kept_share_of_the_patches_off_objects_and_trains_the_gates():
    model = laudnet.create_model("cifar_resnet20", paradigm="spatial", granularity="4-2-1", num_classes=8,
                                 in_channels=1, input_size=16)
    image = image_pixels([(16, 16), (16, 8)], (16, 16))  # image 1 covers the left half of the batch
    objects = object_pixels([torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.zeros(0, 4)], (16, 16))
    model.eval()(torch.randn(2, 1, 16, 16))  # eval, every gate open: all of the background is kept
    assert float(background_loss(model, image, objects)) == pytest.approx(1.0)
    block = model.layer1[0]  # granularity 4 on a 16x16 map: 4x4 patches of 4x4 pixels
    kept = torch.zeros(2, 4, 4)
    kept[0, 0, 3] = kept[0, 1, 1] = kept[1, 2, 1] = kept[1, 3, 3] = 1.0  # 1 on the box, 1 off it, 1 in the padding
    block.last = replace(block.last, patches=kept)
    blocks = len([b for _, b in dynamic_blocks(model)])
    # layer1[0]: 2 of the 12 + 8 background patches (the box takes 4 of image 0's; the padding 8 of image 1's)
    assert float(background_loss(model, image, objects)) == pytest.approx((blocks - 1 + 2 / 20) / blocks)
    on_objects = object_pixels([torch.tensor([[0.0, 0.0, 16.0, 16.0]])] * 2, (16, 16))
    assert float(background_loss(model, image, on_objects)) == 0.0  # no background

    model.train()(torch.randn(2, 1, 16, 16))  # straight-through decisions: more kept background costs more
    background_loss(model, image, objects).backward()
    assert all(float(b.spatial_masker.conv.bias.grad) > 0 for _, b in dynamic_blocks(model))
    static = laudnet.set_execution(laudnet.create_model("cifar_resnet20", num_classes=8, in_channels=1), "static")
    static(torch.randn(2, 1, 16, 16))
    assert float(background_loss(static, image, objects)) == 0.0  # no spatial gates


def test_detection_train_eval_report_from_the_command_line(tmp_path, capsys):
    data = ["--dataset", "shapes-detection", "--task", "detection", "--image-size", "64",
            "--train-size", "4", "--test-size", "2", "--batch-size", "2", "--epochs", "1", "--lr", "0.01",
            "--no-progress", "--no-tensorboard"]
    assert main(["train", "--static", "--out", str(tmp_path / "t"), *data]) == 0
    assert main(["train", "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "s"), "--distill-region",
                 "objects", *data]) == 0
    with open(tmp_path / "s" / "epochs.csv") as f:
        epoch = next(csv.DictReader(f))
    assert float(epoch["kd"]) > 0 and 0 <= float(epoch["val_AP"]) <= 1 and float(epoch["val_flops_ratio"]) > 0
    assert "loss_objectness" in epoch

    assert main(["eval", str(tmp_path / "s"), "--latency-batch", "1", "--latency-size", "64,96",
                 "--repeats", "2"]) == 0
    assert main(["eval", str(tmp_path / "t")]) == 0
    result = json.loads((tmp_path / "s" / "eval.json").read_text())
    assert result["task"] == "detection" and result["execution"] == "sparse" and result["test_samples"] == 2
    assert list(result["coco"]["bbox"]) == list(METRICS) and result["AP"] == result["coco"]["bbox"]["AP"]
    assert len(result["blocks"]) == 8 and 0 < result["flops_ratio"] < 1.5 and result["object"] is not None
    assert [(m["part"], m["size"], m["batch"]) for m in result["latency"]] == [
        ("backbone", 64, 1), ("detector", 64, 1), ("backbone", 96, 1), ("detector", 96, 1)]
    assert result["latency"][2]["input"].startswith("1x3x96x")
    summary = (tmp_path / "s" / "eval.md").read_text()
    assert "COCO bbox: AP" in summary and "| kept on objects | all patches on objects |" in summary
    assert result["trained_with"]["distill_region"] == "objects" and "lr" in result["trained_with"]
    evaluated = result["evaluated"]
    assert "cores" in evaluated["machine"] and "torch" in evaluated["machine"]
    assert "distill_region objects" in summary and f"evaluated on {evaluated['date']}, {evaluated['machine']}" in summary
    assert all(0 < b["chance"] < 1 for b in result["blocks"])  # every block of the body is spatial
    assert json.loads((tmp_path / "t" / "eval.json").read_text())["latency"] == []

    assert main(["report", str(tmp_path / "t"), str(tmp_path / "s"), "--out", str(tmp_path / "r"),
                 "--examples", "2"]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("data:image/png;base64") == 4  # AP/FLOPs, rates, masks with boxes, decisions
    assert "box AP" in page and "detections in cyan" in page
    capsys.readouterr()

    code = main(["eval", str(tmp_path / "s"), "--hardware", "v100"])
    assert code == 2 and "predicted latency on hardware profiles covers classifiers" in capsys.readouterr().err
    code = main(["train", "--distill-region", "objects", "--out", str(tmp_path / "x")])
    assert code == 2 and ("distillation region 'objects' needs a detection dataset; classification distils the "
                          "logits of the whole image") in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    code = main(["train", "--background-weight", "1", "--out", str(tmp_path / "x")])
    assert code == 2 and ("background weight 1 needs a detection dataset, whose object boxes say what is "
                          "background; classification has none (give 0)") in capsys.readouterr().err
    code = main(["train", *data, "--paradigm", "channel", "--background-weight", "0.5", "--out", str(tmp_path / "x")])
    assert code == 2 and ("--background-weight 0.5 weighs the patches spatial gates keep; paradigm 'channel' has "
                          "none (give --paradigm spatial)") in capsys.readouterr().err
    code = main(["train", *data, "--background-weight", "-1", "--out", str(tmp_path / "x")])
    assert code == 2 and "background weight must be a finite number of at least 0, got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    code = main(["train", "--task", "detection", "--out", str(tmp_path / "x")])
    assert code == 2 and ("--task detection does not fit --dataset cluttered, a classification dataset; detection "
                          "datasets: shapes-detection, coco") in capsys.readouterr().err
