"""Labels and help for every JobConfig field and group, in English and Chinese.

English help is never copied here: it comes from the field metadata in `app.config`, the one source
of truth. This module only adds short English labels and the Chinese translations;
`tests/test_ui_logic.py` checks that every field and group has both.
"""

from __future__ import annotations

from app.config import GROUPS, JobConfig

# Short English labels where the YAML key reads badly; every other field shows "Key name".
EN_LABELS = {
    "model_name_or_path": "Model name or path",
    "quantization_bit": "Quantization bits (QLoRA)",
    "double_quantization": "Double quantization",
    "stage": "Stage",
    "finetuning_type": "Method",
    "dataset": "Datasets",
    "dataset_dir": "Dataset folder",
    "cutoff_len": "Cutoff length",
    "per_device_train_batch_size": "Batch size per device",
    "gradient_accumulation_steps": "Gradient accumulation",
    "lr_scheduler_type": "LR scheduler",
    "max_grad_norm": "Max gradient norm",
    "bf16": "bf16",
    "fp16": "fp16",
    "lora_rank": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "lora_target": "LoRA target modules",
    "optim": "Optimizer",
    "output_dir": "Run name or folder",
    "distributed_strategy": "Strategy",
    "num_processes": "Processes",
    "num_machines": "Machines",
    "machine_rank": "Machine rank",
    "main_process_ip": "Main machine address",
    "main_process_port": "Main machine port",
    "flash_attn": "Attention kernel",
    "enable_liger_kernel": "Liger kernels",
    "torch_compile": "torch.compile",
    "packed_weights": "Packed CPU weights (oneDNN)",
    "offload": "CPU offload",
    "deepspeed": "DeepSpeed config",
    "padding_free": "Padding-free batches",
    "eval_dataset": "Eval datasets",
    "early_stopping_steps": "Early stopping patience (evaluations)",
    "load_best_model_at_end": "Load the best checkpoint at the end",
    "metric_for_best_model": "Metric for the best model",
    "report_to": "Report to (trackers)",
    "pref_loss": "Preference loss",
    "pref_beta": "Preference beta",
    "pref_ftx": "SFT loss weight (pref_ftx)",
    "use_dora": "DoRA",
    "use_rslora": "rsLoRA",
    "pissa_init": "PiSSA initialisation",
    "loraplus_lr_ratio": "LoRA+ learning-rate ratio",
    "adapter_name_or_path": "Start from adapter",
    "neftune_noise_alpha": "NEFTune noise alpha",
    "rope_scaling": "RoPE scaling",
    "reward_funcs": "Reward functions",
    "reward_model": "Reward model (rm run)",
    "reward_judge_url": "Judge API base URL",
    "reward_judge_model": "Judge model",
    "grpo_beta": "KL beta",
}

ZH_LABELS = {
    "model_name_or_path": "模型名称或路径",
    "template": "对话模板",
    "quantization_bit": "量化位数 (QLoRA)",
    "quantization_type": "量化数据类型",
    "double_quantization": "双重量化",
    "stage": "训练阶段",
    "finetuning_type": "微调方法",
    "dataset": "数据集",
    "dataset_dir": "数据目录",
    "cutoff_len": "截断长度",
    "max_samples": "最大样本数",
    "val_size": "验证集比例",
    "learning_rate": "学习率",
    "num_train_epochs": "训练轮数",
    "max_steps": "最大步数",
    "per_device_train_batch_size": "每设备批大小",
    "gradient_accumulation_steps": "梯度累积",
    "lr_scheduler_type": "学习率调度器",
    "warmup_ratio": "预热比例",
    "max_grad_norm": "最大梯度范数",
    "bf16": "bf16",
    "fp16": "fp16",
    "lora_rank": "LoRA 秩",
    "lora_alpha": "LoRA 缩放系数",
    "lora_dropout": "LoRA 随机丢弃",
    "lora_target": "LoRA 作用模块",
    "freeze_trainable_layers": "可训练层数",
    "freeze_trainable_modules": "可训练模块",
    "pref_beta": "偏好优化 beta 参数",
    "pref_loss": "偏好损失函数",
    "optim": "优化器",
    "weight_decay": "权重衰减",
    "warmup_steps": "预热步数",
    "gradient_checkpointing": "梯度检查点",
    "logging_steps": "日志间隔",
    "save_steps": "保存间隔",
    "eval_steps": "评估间隔",
    "save_total_limit": "最多保留检查点",
    "seed": "随机种子",
    "output_dir": "运行名称或目录",
    "resume_from_checkpoint": "从检查点恢复",
    "distributed_strategy": "并行策略",
    "num_processes": "进程数",
    "num_machines": "机器数",
    "machine_rank": "本机序号",
    "main_process_ip": "主机地址",
    "main_process_port": "主机端口",
    "flash_attn": "注意力内核",
    "enable_liger_kernel": "Liger 内核",
    "torch_compile": "torch.compile 编译",
    "packed_weights": "CPU 预打包权重（oneDNN）",
    "offload": "卸载到 CPU",
    "deepspeed": "DeepSpeed 配置",
    "padding_free": "无填充批次",
    "eval_dataset": "评估数据集",
    "early_stopping_steps": "早停耐心（评估次数）",
    "load_best_model_at_end": "结束时加载最佳检查点",
    "metric_for_best_model": "最佳模型指标",
    "report_to": "实验跟踪",
    "pref_ftx": "SFT 损失权重 (pref_ftx)",
    "simpo_gamma": "SimPO gamma",
    "kto_chosen_weight": "KTO 正例权重",
    "kto_rejected_weight": "KTO 负例权重",
    "reward_funcs": "奖励函数",
    "reward_weights": "奖励权重",
    "reward_regex": "格式奖励正则",
    "reward_target_length": "长度奖励目标长度",
    "reward_model": "奖励模型（rm 运行）",
    "reward_judge_url": "评判 API 地址",
    "reward_judge_model": "评判模型",
    "num_generations": "每个提示的采样数",
    "max_completion_length": "最大生成长度",
    "grpo_beta": "KL 系数 beta",
    "generation_temperature": "采样温度",
    "use_dora": "DoRA",
    "use_rslora": "rsLoRA",
    "pissa_init": "PiSSA 初始化",
    "pissa_iter": "PiSSA 迭代次数",
    "loraplus_lr_ratio": "LoRA+ 学习率比例",
    "adapter_name_or_path": "从已有适配器开始",
    "neftune_noise_alpha": "NEFTune 噪声系数",
    "rope_scaling": "RoPE 缩放",
    "enable_thinking": "启用思考模式",
}

ZH_HELP = {
    "model_name_or_path": "基础模型：本地目录、Hugging Face 模型 ID（遵循 HF_ENDPOINT），留空则使用内置的 "
                          "SmolLM2-135M-Instruct。",
    "template": "对话模板：留空使用分词器自带模板；或 LLaMA-Factory 的模板名（qwen3、qwen、llama3、gemma、"
                "gemma3、phi、phi4、deepseek3、deepseekr1、mistral、chatml、alpaca、default 等：分词器自带"
                "模板属于该系列时用自带的，否则用内置的），或 .jinja 文件路径。",
    "quantization_bit": "用 bitsandbytes 以 4 或 8 位加载基础模型（QLoRA），仅限 LoRA。",
    "quantization_type": "QLoRA 的 4 位数据类型。",
    "double_quantization": "对 4 位量化常数再做一次量化。",
    "stage": "sft：监督式对话微调；dpo：偏好对（pref_loss：DPO、IPO、hinge、ORPO、SimPO）；pt：在纯文本上继续预训练；"
             "kto：标注好坏的回答（kto_tag）；rm：在偏好对上训练奖励模型；grpo：在提示上用奖励函数做强化学习。",
    "finetuning_type": "lora：小型适配器；freeze：只训练最后几层；full：训练全部权重。",
    "dataset": "数据目录中的数据集名称，用逗号分隔。",
    "dataset_dir": "存放 dataset_info.json 的目录。",
    "cutoff_len": "训练序列的最大 token 数，超出部分会被截断。",
    "max_samples": "每个数据集最多使用这么多行。",
    "val_size": "留作评估损失的行：比例（0-1）或行数（>=1）。",
    "learning_rate": "峰值学习率。",
    "num_train_epochs": "遍历数据的轮数。",
    "max_steps": "达到这么多优化步后停止（-1 表示按轮数）。",
    "per_device_train_batch_size": "每个设备每步的行数。",
    "gradient_accumulation_steps": "累加多少步的梯度后再更新一次参数。",
    "lr_scheduler_type": "学习率调度方式。",
    "warmup_ratio": "学习率预热所占步数的比例。",
    "max_grad_norm": "梯度裁剪的范数上限（0 表示不裁剪）。",
    "bf16": "使用 bfloat16 混合精度训练。留空（none）为自动：GPU 支持 bfloat16（Ampere 及更新）且未开 fp16 "
            "时启用；CPU 上用 float32。",
    "fp16": "使用 float16 混合精度训练（较旧的 GPU）。",
    "lora_rank": "LoRA 的秩 r。",
    "lora_alpha": "LoRA 缩放系数 alpha（留空为 2 倍秩）。",
    "lora_dropout": "LoRA 分支上的 dropout。",
    "lora_target": "要适配的模块：all（所有线性层）或 q_proj,v_proj 这样的名称。",
    "freeze_trainable_layers": "训练最后 N 层（负数表示最前面 N 层）。",
    "freeze_trainable_modules": "这些层中要训练的模块：all 或 mlp,self_attn 这样的名称。",
    "pref_beta": "DPO beta：策略模型可以偏离参考模型多远。",
    "pref_loss": "偏好损失：sigmoid（DPO 论文）、ipo（平方形式，较不易过拟合）、hinge（SLiC）；orpo（几率比 + SFT，"
                 "无需参考模型；pref_beta 即其 lambda）；simpo（按长度归一化的间隔，无需参考模型）。",
    "pref_ftx": "在偏好损失上再加一项对选中回答的 SFT 损失的权重（DPO、SimPO；ORPO 自带）。",
    "simpo_gamma": "SimPO 的目标奖励间隔。",
    "kto_chosen_weight": "KTO 中好回答（kto_tag 为 true）的权重。",
    "kto_rejected_weight": "KTO 中坏回答（kto_tag 为 false）的权重。",
    "reward_funcs": "GRPO 奖励，用逗号分隔：exact_match（回答列，即数据集的 response，出现在生成中）、format（匹配 "
                    "reward_regex）、length（接近 reward_target_length 个字符）、reward_model（reward_model）、judge"
                    "（reward_judge_url），或 path/to/file.py:function（自定义函数）。",
    "reward_weights": "各奖励的权重，用逗号分隔（留空全为 1）。",
    "reward_regex": "格式奖励要求生成从开头匹配的正则表达式。",
    "reward_target_length": "长度奖励偏好的生成长度（字符数）。",
    "reward_model": "已完成的 rm 阶段运行目录（或序列分类模型目录），用来给生成打分。",
    "reward_judge_url": "OpenAI 兼容 API 的地址（如 http://127.0.0.1:8000/v1），由其模型给每个生成打 0-10 分；"
                        "密钥读取 FTSTUDIO_JUDGE_API_KEY 或 OPENAI_API_KEY。",
    "reward_judge_model": "在 reward_judge_url 上调用的模型名。",
    "num_generations": "每个提示采样的生成数（在组内比较奖励）。",
    "max_completion_length": "采样生成的最大 token 数。",
    "grpo_beta": "向初始模型靠拢的 KL 惩罚（0 表示不加，也没有 KL 曲线）。",
    "generation_temperature": "采样生成的温度。",
    "use_dora": "DoRA：权重分解的 LoRA（幅度 + 方向）；每步更慢，效果常更接近全量微调。",
    "use_rslora": "rsLoRA：按 alpha / sqrt(秩) 而非 alpha / 秩 缩放（高秩时更稳定）。",
    "pissa_init": "PiSSA：用每个权重的主奇异向量初始化适配器（收敛更快）；保存时转换为普通 LoRA。",
    "pissa_iter": "PiSSA 快速 SVD 的迭代次数（-1 为精确 SVD）。",
    "loraplus_lr_ratio": "LoRA+：B 矩阵与 A 矩阵的学习率之比（如 16）。",
    "adapter_name_or_path": "从已有的 LoRA 适配器（目录或运行目录）开始继续训练。",
    "neftune_noise_alpha": "NEFTune：训练时给输入嵌入加噪声（如 5）；用于 SFT。",
    "rope_scaling": "拉伸 RoPE 以训练超出模型上下文的长度：系数为 cutoff_len 除以模型的 "
                    "max_position_embeddings，向上取整。",
    "enable_thinking": "带思考开关的模板（qwen3）：开启时按思考模式渲染训练数据和提示；关闭时加入空的思考块。",
    "optim": "优化器。",
    "weight_decay": "AdamW 权重衰减。",
    "warmup_steps": "预热步数（大于 0 时覆盖预热比例）。",
    "gradient_checkpointing": "反向传播时重新计算激活：更省显存，约慢 30%。",
    "logging_steps": "每 N 步记录一次损失。",
    "save_steps": "每 N 步保存一个检查点。",
    "eval_steps": "每 N 步评估一次（留空与保存间隔相同）。",
    "save_total_limit": "最多保留 N 个检查点。",
    "seed": "随机种子。",
    "output_dir": "运行目录（留空为 runs/<阶段>-<方法>-<时间>）。",
    "resume_from_checkpoint": "true 表示从输出目录中最新的完整检查点继续；或填写检查点路径。",
    "distributed_strategy": "多个进程如何分担训练。auto：可见多块 GPU（或 num_processes > 1）时用 ddp，否则单进程；"
                            "ddp：每块 GPU 一份完整副本；fsdp：权重、梯度和优化器状态分片到各 GPU；"
                            "deepspeed_zero2 / deepspeed_zero3：DeepSpeed ZeRO（需 `pip install deepspeed`）。",
    "num_processes": "训练进程数（每块 GPU 一个）；留空为所有可见 GPU。没有 GPU 时，ddp 或 fsdp 下大于 1 "
                     "的数值会启动相应数量的 CPU 进程。",
    "num_machines": "参与训练的机器数（accelerate 多机）：在每台机器上用各自的 machine_rank 启动同一个任务；"
                    "“预览命令”会列出每台机器要运行的命令。",
    "machine_rank": "本机在 num_machines 台机器中的序号（0 为主机）。",
    "main_process_ip": "其他机器可以访问到的 0 号主机地址（多机训练）。",
    "main_process_port": "0 号主机上用于会合的端口（多机训练）。",
    "flash_attn": "注意力内核：auto（在 CUDA GPU 上且已安装 flash-attn 时，无填充批次用 FlashAttention-2，否则用 "
                  "PyTorch SDPA）、disabled（eager）、sdpa、fa2。",
    "enable_liger_kernel": "在 CUDA GPU 上使用 Liger 的融合 Triton 内核（RMSNorm、RoPE、SwiGLU；需 pip install "
                           "liger-kernel）；CPU 上忽略。GPU 上的损失头始终是融合的。",
    "torch_compile": "用 torch.compile 编译模型：一次性编译耗时，换取 GPU 长时间训练时更快的每一步"
                     "（新长度的行会重新编译；短任务不值得）。",
    "packed_weights": "CPU 上以 fp32 训练 LoRA 时，冻结的基座权重走 oneDNN，为前向与反向各打包一次："
                      "每步更快，多占一份这些权重的内存，仅在内存足够时启用。auto：SFT 与预训练；always：DPO 也打包"
                      "（其激活值较小，这份拷贝约使峰值增加四分之一）；never：使用 PyTorch 默认内核。",
    "offload": "把优化器状态（fsdp / ZeRO-3 时连同参数）放在 CPU 内存：更省显存，但每步更慢。",
    "deepspeed": "DeepSpeed JSON 配置文件路径（LLaMA-Factory 的键名）；原样使用，代替自动生成的 ZeRO 配置。"
                 "意味着使用 DeepSpeed 策略。",
    "padding_free": "把每个批次拼接成一条带行边界的序列：不在填充上浪费计算。关闭时按批内最长行填充。"
                    "（SFT 与预训练；DPO 总是填充。）",
    "eval_dataset": "用于评估损失的数据集名称，用逗号分隔，代替按 val_size 划分验证集。",
    "early_stopping_steps": "评估损失连续这么多次评估没有改善时停止训练（需要 val_size 或 eval_dataset）。",
    "load_best_model_at_end": "训练结束时把评估损失最好的检查点作为本次运行的适配器"
                              "（save_steps 必须是 eval_steps 的整数倍）。",
    "metric_for_best_model": "load_best_model_at_end 与早停中“最佳”的含义：评估损失最低。",
    "report_to": "实验跟踪工具，用逗号分隔：none；tensorboard（事件文件写入 <运行目录>/tensorboard）；"
                 "wandb（离线写入 <运行目录>/wandb，除非设置了 WANDB_MODE 或 WANDB_API_KEY）；"
                 "mlflow（写入 <运行目录>/mlruns，除非设置了 MLFLOW_TRACKING_URI）；"
                 "以及已安装的 comet_ml、clearml、trackio、swanlab 等。",
}

ZH_GROUPS = {
    "model": "模型",
    "method": "方法",
    "data": "数据",
    "basic": "训练",
    "lora": "LoRA",
    "freeze": "冻结训练",
    "dpo": "偏好优化 (DPO、KTO、ORPO、SimPO)",
    "grpo": "强化学习 (GRPO)",
    "distributed": "多 GPU",
    "evaluation": "评估与实验跟踪",
    "advanced": "高级设置",
}


def en_label(name: str) -> str:
    return EN_LABELS.get(name) or name.replace("_", " ").capitalize()


def field_strings() -> dict[str, dict[str, str]]:
    """{"field.<name>": label, "field.<name>.info": help, "group.<group>": title} in en and zh."""
    table: dict[str, dict[str, str]] = {}
    for name, spec in JobConfig.spec().items():
        table[f"field.{name}"] = {"en": en_label(name), "zh": ZH_LABELS.get(name, en_label(name))}
        table[f"field.{name}.info"] = {"en": spec.metadata["help"], "zh": ZH_HELP.get(name, spec.metadata["help"])}
    for group, title in GROUPS.items():
        table[f"group.{group}"] = {"en": title, "zh": ZH_GROUPS.get(group, title)}
    return table
