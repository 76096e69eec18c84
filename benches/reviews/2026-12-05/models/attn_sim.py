import numpy as np
rng=np.random.default_rng(1)
B,T,C,NH=2,7,48,3; hs=C//NH; scale=1/np.sqrt(hs)
qkv=rng.standard_normal(B*T*3*C); dout=rng.standard_normal(B*T*C)
N=B*NH*T*hs
# permute_qkv (flat kernel index math)
q=np.zeros(N);k=np.zeros(N);v=np.zeros(N)
for idx in range(N):
    d=idx%hs;t=(idx//hs)%T;h=(idx//(hs*T))%NH;b=idx//(hs*T*NH)
    src=(b*T+t)*3*C+h*hs+d
    q[idx]=qkv[src];k[idx]=qkv[src+C];v[idx]=qkv[src+2*C]
Q=q.reshape(B*NH,T,hs);K=k.reshape(B*NH,T,hs);V=v.reshape(B*NH,T,hs)
att=(Q@K.transpose(0,2,1)).reshape(-1)   # gemm(t,t,hs).trans_b
rows=B*NH*T
def softmax_rows(att):
    for row in range(rows):
        t=row%T; x=att[row*T:(row+1)*T]
        mx=max(scale*x[s] for s in range(t+1))
        ssum=sum(np.exp(scale*x[s]-mx) for s in range(t+1))
        x[:]=[np.exp(scale*x[s]-mx)/ssum if s<=t else 0 for s in range(T)]
softmax_rows(att)
P=att.reshape(B*NH,T,T)
heads=(P@V).reshape(-1)
out=np.zeros(B*T*C)
for idx in range(N):
    d=idx%hs;t=(idx//hs)%T;h=(idx//(hs*T))%NH;b=idx//(hs*T*NH)
    out[(b*T+t)*NH*hs+h*hs+d]=heads[idx]
# reference
X=qkv.reshape(B,T,3,NH,hs)
q_=X[:,:,0].transpose(0,2,1,3);k_=X[:,:,1].transpose(0,2,1,3);v_=X[:,:,2].transpose(0,2,1,3)
S=q_@k_.transpose(0,1,3,2)*scale
mask=np.tril(np.ones((T,T)))
S=np.where(mask,S,-np.inf);Pr=np.exp(S-S.max(-1,keepdims=True));Pr/=Pr.sum(-1,keepdims=True)
Y=(Pr@v_).transpose(0,2,1,3).reshape(-1)
print("fwd out err",abs(out-Y).max()," att err",abs(att-Pr.reshape(-1)).max())
# backward, GPU algorithm
dheads=np.zeros(N)
for idx in range(N):
    d=idx%hs;t=(idx//hs)%T;h=(idx//(hs*T))%NH;b=idx//(hs*T*NH)
    dheads[idx]=dout[(b*T+t)*NH*hs+h*hs+d]
DH=dheads.reshape(B*NH,T,hs)
datt=(DH@V.transpose(0,2,1)).reshape(-1)
dV=P.transpose(0,2,1)@DH
for row in range(rows):
    t=row%T; dd=datt[row*T:(row+1)*T]; p=att[row*T:(row+1)*T]
    dot=sum(p[s]*dd[s] for s in range(t+1))
    dd[:]=[scale*p[s]*(dd[s]-dot) if s<=t else 0 for s in range(T)]
DS=datt.reshape(B*NH,T,T)
dQ=DS@K; dK=DS.transpose(0,2,1)@Q
dqkv=np.zeros(3*B*T*C)
dq=dQ.reshape(-1);dk=dK.reshape(-1);dv=dV.reshape(-1)
for idx in range(N):
    d=idx%hs;t=(idx//hs)%T;h=(idx//(hs*T))%NH;b=idx//(hs*T*NH)
    dst=(b*T+t)*3*C+h*hs+d
    dqkv[dst]=dq[idx];dqkv[dst+C]=dk[idx];dqkv[dst+2*C]=dv[idx]
# finite-difference / analytic reference via autograd-free formula
dY=dout.reshape(B,T,NH,hs).transpose(0,2,1,3)
dv_=Pr.transpose(0,1,3,2)@dY
dP=dY@v_.transpose(0,1,3,2)
dS=Pr*(dP-(Pr*dP).sum(-1,keepdims=True))*scale
dq_=dS@k_; dk_=dS.transpose(0,1,3,2)@q_
ref=np.stack([dq_,dk_,dv_],0).transpose(1,3,0,2,4).reshape(-1)
print("bwd dqkv err",abs(dqkv-ref).max())
