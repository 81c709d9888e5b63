"""kaol: the one-layer transformer of Xu and Chen (arXiv 2508.00901), its data and training.

Modules, one idea each: ``data`` (Sec. 3), ``model`` (Sec. 2 and Table 3), ``fast`` (exact
sparse gradients, Lemma 1), ``train`` (Sec. 4, App. H), ``metrics``, ``mechanism`` (coverage),
``dense`` (the dense reference), ``checks`` (input checks), ``cache``, ``sweep`` (Sec. 7 grids),
``scales``, ``parallel``, ``analysis``, ``table3`` and ``experiments`` (chapter 6, its command line),
``lora`` (peft), ``gpt2``, ``gpt2_synthetic``, ``gpt2_text``, ``causal_lm``, ``lmtrain`` (their one
training loop), ``scoring`` and ``popqa`` (GPT-2, causal LMs, PopQA), ``plots``, ``widgets``, ``claims``.
"""
from .data import DataConfig, KnowledgeData, Vocab, entropy, make_data
from .model import ARCHS, ModelConfig, forward, init_params
from .train import FTConfig, FTHistory, PTHistory, Schedule, finetune, pretrain

__all__ = ["ARCHS", "DataConfig", "FTConfig", "FTHistory", "KnowledgeData", "ModelConfig", "PTHistory",
           "Schedule", "Vocab", "entropy", "finetune", "forward", "init_params", "make_data", "pretrain"]
__version__ = "0.1.0"
