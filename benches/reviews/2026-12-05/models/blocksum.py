# Simulate common.cuh block_sum for blockDim=512 (classifier) with v=1 per thread
def warp_sum(vals):  # xor butterfly over 32 lanes -> all lanes get total
    s=sum(vals); return [s]*32
def block_sum(vs, blockDim):
    warps=(blockDim+31)//32
    partial=[0]*32
    out=[None]*blockDim
    w_res=[]
    for w in range(warps):
        r=warp_sum(vs[w*32:(w+1)*32])
        partial[w]=r[0]
    for w in range(warps):
        lanes=[(partial[tid] if tid<warps else 0.0) for tid in range(w*32,(w+1)*32)]
        r=warp_sum(lanes)
        for l in range(32): out[w*32+l]=r[l]
    return out
o=block_sum([1.0]*512,512)
print("thread0:",o[0]," thread31:",o[31]," thread32:",o[32]," thread511:",o[511])
