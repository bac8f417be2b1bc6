"""The machine a timing belongs to: two hosts with one generic CPU name are told apart."""

from harness.spec.settings import cpu_model, describe_cpu, machine

# /proc/cpuinfo as two VMs of this project printed it (first processor, shortened): both
# call themselves "AMD EPYC"; the first has AVX512-VNNI, the second AVX2 only, and the same
# training step ran 2-4x slower on the second.
ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16

processor\t: 1
model name\t: something else
"""
ZEN1 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_hosts_with_one_generic_name_are_told_apart():
    assert describe_cpu(ZEN4) == "AMD EPYC (family 25 model 17, AVX512-VNNI)"
    assert describe_cpu(ZEN1) == "AMD EPYC (family 23 model 1, AVX2)"


def test_a_cpu_without_details_keeps_its_name():
    assert describe_cpu("", "x86_64") == "x86_64"
    assert describe_cpu("model name\t: Some CPU\n") == "Some CPU"
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm\nCPU part\t: 0xd0c\n"
    assert describe_cpu(arm, "aarch64") == "aarch64 (NEON)"


def test_the_provenance_and_the_run_ids_name_the_same_cpu():
    from harness.records.provenance import provenance

    prov = provenance("cpu", threads=1)
    assert prov["cpu_model"] == cpu_model() and cpu_model() in prov["device_name"]
    assert machine().startswith(cpu_model())
