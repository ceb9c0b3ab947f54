"""Export layer: merge a LoRA into its base, write GGUF (+ K-quants via llama.cpp), check fidelity,
write an Ollama Modelfile. No gradio here; the Export tab and `ftstudio export` call `pipeline.export`.

    merge.merge_adapter(adapter_dir, output_dir, base_dir=None, max_shard_size="2GB", dtype=None, progress=None)
    gguf_writer.write_gguf(model_dir, out_path, quant="f16", progress=None, name=None)
    fidelity.check_fidelity(merged_dir, gguf_path, texts=None, max_tokens=512, backend="auto")
    modelfile.write_modelfile(gguf_path, chat_template, out_path, system=None, stop=None)
    pipeline.export(source, fmt="safetensors"|"gguf", quant="f16", output_dir=None, progress=None, check=True)

`progress(fraction, message)` callbacks report every step; user-fixable problems raise
`errors.ExportError`.
"""
