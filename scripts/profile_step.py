"""Top ops of 3 training steps (batch 64, AdamW, 1 thread): python scripts/profile_step.py ivit_micro best 12"""
import sys, time, torch
import qvit
from qvit import Flags
from torch.profiler import profile, ProfilerActivity
torch.set_num_threads(1); torch.manual_seed(0)
name = sys.argv[1]; preset = sys.argv[2]
flags = Flags.parse(preset)
m = qvit.create_model(name, num_classes=10, flags=flags)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=flags.fused_optimizer or False)
x = torch.randn(64,3,32,32); y = torch.randint(0,10,(64,))
def step():
    out = m(x); loss = torch.nn.functional.cross_entropy(out,y)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
for _ in range(3): step()
with profile(activities=[ProfilerActivity.CPU]) as p:
    for _ in range(3): step()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=int(sys.argv[3]) if len(sys.argv)>3 else 25))
