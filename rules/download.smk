# Real datasets and pretrained weights. Both are localrules: cluster nodes often have no
# internet, so these run on the submit host.


# Download one entry of config["downloads"]: fetch each file to a temp name, verify its
# checksum, unpack archives, then move the finished directory into place.
rule download:
    output:
        directory("data/{download}"),
    log:
        results("logs/download/{download}.log"),
    conda:
        "../envs/data.yaml"
    params:
        spec=lambda wildcards: json.dumps(
            config["downloads"][wildcards.download], sort_keys=True
        ),
    shell:
        "python -m workflow_scripts.download --spec {params.spec:q} --out {output} > {log} 2>&1"


# ImageNet ResNet-101 / DeepLabV3-ResNet101 weights (torchvision's URLs, or backbones.<name>.weights_url),
# for cluster users whose compute nodes cannot reach the model hub.
rule fetch_weights:
    output:
        "data/weights/{backbone}.pth",
    log:
        results("logs/fetch_weights/{backbone}.log"),
    conda:
        "../envs/train.yaml"
    params:
        url=lambda wildcards: backbone_cfg(wildcards)["weights_url"] or "",
    shell:
        "python -m workflow_scripts.fetch_weights --backbone {wildcards.backbone} --url={params.url:q} --out {output} > {log} 2>&1"
