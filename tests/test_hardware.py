"""deemd.hardware: where the rules that run a network find a GPU, and their threads."""

from deemd.hardware import MALLOC_SETTINGS, local_gpu_present, network_rule_threads, threads_beside_another, with_malloc_settings


def test_gpu_needs_the_driver_and_a_device_other_than_cpu(tmp_path):
    control = tmp_path / "nvidiactl"
    assert not local_gpu_present("auto", control)
    control.touch()
    assert local_gpu_present("auto", control) and local_gpu_present("cuda:1", control)
    assert not local_gpu_present("cpu", control)


def test_threads_feed_a_gpu_or_split_the_cores():
    assert network_rule_threads(True, 2) == 4
    assert network_rule_threads(False, 2) == 1
    assert network_rule_threads(False, 1) == 1
    assert network_rule_threads(False, 16) == 8
    assert network_rule_threads(False, None) == 4


def test_threads_beside_another_take_half_the_cores_up_to_their_most():
    assert threads_beside_another(2, 2) == 1 and threads_beside_another(2, 16) == 2
    assert threads_beside_another(4, 8) == 4 and threads_beside_another(None, 12) == 6
    assert threads_beside_another(2, None) == 2 and threads_beside_another(None, None) == 1


def test_malloc_settings_are_added_where_the_user_set_none():
    assert with_malloc_settings({"PATH": "/bin"}) == {"PATH": "/bin", **MALLOC_SETTINGS}
    assert int(MALLOC_SETTINGS["MALLOC_TRIM_THRESHOLD_"]) >= int(MALLOC_SETTINGS["MALLOC_MMAP_THRESHOLD_"]) > 32 * 2**20
    mine = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
    assert with_malloc_settings(mine)["MALLOC_MMAP_THRESHOLD_"] == "1048576"
