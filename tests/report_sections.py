"""Which topics each section of the Gemma 3 report (arXiv 2503.19786v1) covers, for the citation check.

Read against the report's text. Each entry: a pattern for a topic, and the sections whose text
states it. A citation "section N.M" / "§N.M" in a paragraph that mentions the report must name one
of the sections of the nearest topic written before it (tests/test_report_citations.py).

Section map of the report: 1 Introduction (256 vectors per image, 1,024-token local span, 1 global
per 5 local, the Gemini 2.0 tokenizer); 2 Model Architecture (GQA, pre- and post-norm RMSNorm,
QK-norm instead of soft-capping, 5:1 interleaving starting with a local layer, Table 1, "Long
context": 128K / 32K, RoPE bases 10k and 1M, positional interpolation); 2.1 Vision modality
(400M SigLIP at 896x896, frozen and shared; Pan & Scan); 2.2 Pre-training (token budgets,
tokenizer with 262k entries, filtering, distillation with 256 sampled logits); 2.3 Quantization
Aware Training (int4, int4 blocks, SFP8; Table 3); 2.4 Compute Infrastructure; 3 Instruction-Tuning
([BOS], PT versus IT formatting, Table 4); 4 Evaluation; 5.1 probing; 5.2 Local:Global attention
layers (ratio, sliding window size, KV cache memory: Figures 3-6; Gemma 2's 1:1 and 4,096);
5.3 Enabling long context (32K pre-training, RoPE rescaled by a factor of 8 to 128K for 4B-27B);
5.4 Small versus large teacher; 5.5 Vision encoder (image resolution, 4x4 average pooling of the
896 encoder, Pan & Scan gains); 6 Memorization and Privacy; 7 Responsibility, Safety, Security.
Not in the report: the 270M (released later), the 512-token windows of the 270M and 1B
(published configs), bidirectional attention among an image's tokens (released implementations).
"""

SECTIONS = {"1", "2", "2.1", "2.2", "2.3", "2.4", "3", "4", "4.1", "4.2", "5", "5.1", "5.2", "5.3", "5.4",
            "5.5", "6", "7", "7.1", "7.2", "7.3", "7.4", "7.5", "8", "9"}

TOPICS: list[tuple[str, set[str]]] = [
    (r"1,?024", {"1", "5.2"}),
    (r"4,?096[- ]token window|Gemma 2 used 4,?096|sw=4096", {"5.2"}),
    (r"256\s+(vectors|image\s+tokens|soft\s+tokens)", {"1", "5.5"}),
    (r"5:1|5 local|local/global|local and global|interleav|1 global", {"1", "2", "5.2"}),
    (r"QK-norm|soft-?capping", {"2"}),
    (r"RMSNorm|pre- and post-norm|post-norm|pre-norm|before and after", {"2"}),
    (r"grouped-query|GQA", {"2"}),
    (r"RoPE|base frequenc|\b10k\b|\b1M\b|10,000|1,000,000|\bbases?\b", {"2", "5.3"}),
    (r"128K|\b32K\b", {"1", "2", "5.3"}),
    (r"positional interpolation|interpolat|rescal|\bx8\b|factor (of )?8|by 8", {"2", "5.3"}),
    (r"[Ll]ong context", {"2", "5.3"}),
    (r"SigLIP|896|vision encoder|400M|frozen", {"2.1", "5.5"}),
    (r"Pan ?& ?Scan|P&S|\bcrops?\b", {"2.1", "5.5"}),
    (r"tokenizer|SentencePiece|262k|262,144|byte-level|byte fallback|vocabulary|split digits", {"2.2"}),
    (r"[Dd]istill|256\s+(sampled\s+)?logits|sampled|renormaliz|teacher", {"2.2", "5.4"}),
    (r"[Qq]uantiz|int4|SFP8|switched fp8|Table 3|QAT", {"2.3"}),
    (r"Table 1|parameter counts", {"2"}),
    (r"Figures? [3-6]|window size|perplexity|KV[- ]cache memory|memory it saves|ablation", {"5.2"}),
    (r"4x4|average[- ]pool", {"5.5"}),
    (r"resolution", {"5.5"}),
    (r"chat template|start_of_turn|end_of_turn|\[BOS\]|formatting", {"3"}),
    (r"Chatbot Arena|LMSYS|\bElo\b", {"4.1"}),
    (r"memoriz", {"6"}),
]
