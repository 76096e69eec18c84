import math, random
random.seed(0)
BD=512; W=BD//32
def block_red(vals, op, ident, fixed):
    parts=[ident]*32
    for w in range(W):
        r=ident
        for l in range(32): r=op(r,vals[w*32+l])
        parts[w]=r
    out=[]
    for tid in range(BD):
        lane=tid%32; w=tid//32
        r=ident
        for l in range(32):
            idx=(l if fixed else w*32+l)
            r=op(r, parts[idx] if idx<W else ident)
        out.append(r)
    return out
def classifier(x,vocab,cols,target,dloss,fixed):
    mx=[max([-math.inf]+[x[i] for i in range(t,vocab,BD)]) for t in range(BD)]
    mx=block_red(mx,max,-math.inf,fixed)
    def e(v):
        try: return math.exp(v)
        except OverflowError: return math.inf
    s=[sum(e(x[i]-mx[t]) for i in range(t,vocab,BD)) for t in range(BD)]
    s=block_red(s,lambda a,b:a+b,0.0,fixed)
    loss=math.log(s[0])+mx[0]-x[target] if s[0]<math.inf else math.inf
    d=[0.0]*cols
    for t in range(BD):
        inv=1/s[t] if s[t]!=0 else math.inf
        for i in range(t,cols,BD):
            if i<vocab:
                p=e(x[i]-mx[t])*inv
                d[i]=(p-(1.0 if i==target else 0.0))*dloss
    return loss,d
vocab,cols=1000,1024
x=[random.gauss(0,2) for _ in range(cols)]
for fixed in (False,True):
    loss,d=classifier(x,vocab,cols,7,1.0,fixed)
    bad=sum(1 for v in d if not math.isfinite(v))
    print("fixed" if fixed else "as written", "loss",loss,"non-finite dlogits",bad,"sum(d)",sum(v for v in d if math.isfinite(v)))
m=max(x[:vocab]);z=sum(math.exp(v-m) for v in x[:vocab]);print("reference loss",math.log(z)+m-x[7])
