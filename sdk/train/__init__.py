"""The imitation step: `train_student` runs the recipe's objectives in order on TRL.

runner.py   train_student(TrainRequest, verifier) and the loop over the objectives
sft.py      supervised fine-tuning on the teacher's answers (SFTTrainer)
kd.py       white-box logit distillation, forward KL / JSD / reverse KL (GKDTrainer)
dpo.py      preference optimisation on teacher-over-student or referee-ranked pairs (DPOTrainer)
rlaif.py    GRPO with the likelihood referee's score minus verifier penalties as reward (GRPOTrainer)
replay.py   general-domain instructions mixed in against forgetting
common.py   training arguments, LoRA, checkpoints, saving the student
launch.py   running the stages as an accelerate / torchrun (DeepSpeed) job
worker.py   one rank of that job
"""
