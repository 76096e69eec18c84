# Simulates lowrank_wgmma.cu's index math: cp.async writes into swizzled smem, the hardware's
# reading of the descriptors per the PTX ISA canonical layouts, the accumulator->(row,col) map.
import numpy as np
BM,BN,BK,ST=128,128,64,5
A_BYTES=BM*BK*2; STAGE=A_BYTES+BK*BN*2
def swz(addr): return addr ^ (((addr>>7)&7)<<4)
def kmaj(row,chunk): return row*128+((chunk^(row&7))<<4)
def nmaj(k,nc): return (nc>>3)*8192+k*128+(((nc&7)^(k&7))<<4)
def dec(d):
    return ((d&0x3fff)<<4, ((d>>16)&0x3fff)<<4, ((d>>32)&0x3fff)<<4, (d>>62)&3, (d>>49)&7)
def desc(addr,lbo,sbo):
    enc=lambda x:(x&0x3FFFF)>>4
    return enc(addr)|enc(lbo)<<16|enc(sbo)<<32|1<<62
class Smem:
    def __init__(s,n): s.b=np.full(n//2,np.nan)   # bf16 slots, poisoned
    def w16(s,addr,vals):  # 16 bytes = 8 elems
        assert addr%16==0; s.b[addr//2:addr//2+8]=vals
    def r(s,addr): return s.b[addr//2]
def hw_read_kmajor(sm,d,rows):   # (rows x 16) operand, K-major SW128
    start,lbo,sbo,mode,base=dec(d); assert mode==1 and base==0
    out=np.zeros((rows,16))
    for m in range(rows):
        for k in range(16):
            a=start+(m%8)*128+(m//8)*sbo+k*2
            out[m,k]=sm.r(swz(a))
    return out
def hw_read_nmajor(sm,d,n):      # (16 x n) operand, MN-major SW128: ((8,8,m),(8,k)):((1,8,LBO),(64,SBO)) elems
    start,lbo,sbo,mode,base=dec(d); assert mode==1 and base==0
    out=np.zeros((16,n))
    for k in range(16):
        for j in range(n):
            a=start+(j%64)*2+(j//64)*lbo+(k%8)*128+(k//8)*sbo
            out[k,j]=sm.r(swz(a))
    return out
def run(segs,m,n_valid,n_store,bias,nmaj_lbo=8192,nmaj_sbo=1024,base_off=0x400*3):
    # segs: list of (A (m x lda), lda, B, ldb, k, NT)
    C=np.full((m,n_store),np.nan)
    tiles=[ (k+BK-1)//BK for (_,_,_,_,k,_) in segs]
    for by in range((m+BM-1)//BM):
      for bx in range((n_store+BN-1)//BN):
        m0,n0=by*BM,bx*BN
        sm=Smem(base_off+1024+ST*STAGE+4096)
        s0=(base_off+1023)&~1023
        d=np.zeros((2,64,128))  # per warpgroup acc tile
        tile=0
        for (A,lda,B,ldb,k,NT),nt in zip(segs,tiles):
          for tt in range(nt):
            sa=s0+(tile%ST)*STAGE; sb=sa+A_BYTES; k0=tt*BK
            for i in range(1024):
                row,chunk=i//8,i%8
                pred=m0+row<m and k0+chunk*8<k
                v=A.flat[(m0+row)*lda+k0+chunk*8:(m0+row)*lda+k0+chunk*8+8] if pred else np.zeros(8)
                sm.w16(sa+kmaj(row,chunk),v)
                if NT:
                    gn,gk=n0+row,k0+chunk*8
                    pred=gn<n_valid and gk<k
                    v=B.flat[gn*ldb+gk:gn*ldb+gk+8] if pred else np.zeros(8)
                    sm.w16(sb+kmaj(row,chunk),v)
                else:
                    row,chunk=i//16,i%16; gn,gk=n0+chunk*8,k0+row
                    pred=gn<n_valid and gk<k
                    v=B.flat[gk*ldb+gn:gk*ldb+gn+8] if pred else np.zeros(8)
                    sm.w16(sb+nmaj(row,chunk),v)
            for wg in range(2):
                a0=sa+wg*64*128
                for kk in range(4):
                    Aop=hw_read_kmajor(sm,desc(a0+kk*32,16,1024),64)
                    if NT: Bop=hw_read_kmajor(sm,desc(sb+kk*32,16,1024),128).T
                    else: Bop=hw_read_nmajor(sm,desc(sb+kk*2048,nmaj_lbo,nmaj_sbo),128)
                    d[wg]+=Aop@Bop
            tile+=1
        # epilogue per thread
        for wg in range(2):
          for warp in range(4):
            for lane in range(32):
              # thread's fragment: d_i -> row warp*16+lane/4+8*((i>>1)&1), col 8*(i>>2)+2*(lane%4)+(i&1)
              frag=[d[wg][warp*16+lane//4+8*((i>>1)&1), 8*(i>>2)+2*(lane%4)+(i&1)] for i in range(64)]
              row0=m0+wg*64+warp*16+lane//4
              for j in range(16):
                col=n0+j*8+(lane%4)*2
                if col>=n_store: continue
                b0=bias[col] if bias is not None else 0; b1=bias[col+1] if bias is not None else 0
                for half in range(2):
                  row=row0+half*8
                  if row<m:
                    C[row,col]=frag[4*j+2*half]+b0; C[row,col+1]=frag[4*j+2*half+1]+b1
    return C
rng=np.random.default_rng(1)
def rnd(*s): return rng.integers(-3,4,size=s).astype(float)
# y = [x | t].[W0 ; Vt] + b, ragged: m=200, n_in=104, n_out=200, rank=13 (t stride 16)
m,n_in,n_out,r,stride=200,104,200,13,16
x=rnd(m,n_in); W0=rnd(n_in,n_out); Vt=rnd(r+3,n_out); Ut=rnd(r+3,n_in)
t=np.zeros((m,stride)); t[:,:r]=rnd(m,r); b=rnd(n_out)
ref=x@W0+t[:,:r]@Vt[:r]+b
C=run([(x,n_in,W0,n_out,n_in,False),(t,stride,Vt,n_out,r,False)],m,n_out,n_out,b)
print("y max err",np.nanmax(np.abs(C-ref)),"nan",np.isnan(C).sum())
Cs=run([(x,n_in,W0,n_out,n_in,False),(t,stride,Vt,n_out,r,False)],m,n_out,n_out,b,1024,8192)
print("y swap max err",np.nanmax(np.abs(Cs-ref)))
# dx = [dy | s].[W0^T ; Ut]
dy=rnd(m,n_out); s=np.zeros((m,stride)); s[:,:r]=rnd(m,r)
ref=dy@W0.T+s[:,:r]@Ut[:r]
C=run([(dy,n_out,W0,n_out,n_out,True),(s,stride,Ut,n_in,r,False)],m,n_in,n_in,None)
print("dx max err",np.nanmax(np.abs(C-ref)),"nan",np.isnan(C).sum())
